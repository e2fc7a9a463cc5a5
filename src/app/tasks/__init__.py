"""Every task module is imported here, so importing `app.tasks` registers all actors."""

from app.settings import get_settings
from app.tasks import example  # noqa: F401

if get_settings().diagnostic_tasks:
    from app.tasks import diagnostics  # noqa: F401
