"""Following jobs: the event pump of an API process, the streams and waits it feeds."""
