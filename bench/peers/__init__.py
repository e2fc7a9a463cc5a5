"""The peers Conveyor is measured against: raw Dramatiq, Celery, and bare FastAPI apps."""
