"""Helpers the tests share: the real services, the real processes, a recording SMTP server."""
