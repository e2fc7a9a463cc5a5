"""Who may do what: API keys with scopes, their verification, per-client rate limits, and the
dashboard's signed sessions."""
