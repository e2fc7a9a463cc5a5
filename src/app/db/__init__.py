"""The ledger's storage: tables and engines."""
