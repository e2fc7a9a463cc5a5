"""Static checks of the shipping files: fast, no Docker engine; `pytest -m static` runs them alone."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "static: checks the shipping files (compose, image, monitoring)")
