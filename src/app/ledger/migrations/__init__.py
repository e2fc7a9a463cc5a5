"""Alembic migrations of the ledger, shipped inside the package so `conveyor migrate` works anywhere."""
