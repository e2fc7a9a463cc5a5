"""Operations on jobs that the API, the dashboard and the CLI share."""
