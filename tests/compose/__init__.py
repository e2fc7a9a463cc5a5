"""`docker compose up` for real: the seed's acceptance, checked against running containers."""
