"""Every task module is imported here, so importing `app.tasks` registers all actors."""

from app.tasks import example  # noqa: F401
