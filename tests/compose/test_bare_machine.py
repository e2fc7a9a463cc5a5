"""`make dev` on a Debian machine with none of the services installed (tests/compose/bare.py):
as root it installs them from Debian's packages, starts them, and serves the README's first
example. The check itself runs in the background from the start of the run (BareRun)."""

from __future__ import annotations

import pytest

from tests.compose.bare import BareRun

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1500)]


def test_make_dev_on_a_machine_without_the_services_installs_them_and_the_first_example_works(
    bare_run: BareRun,
) -> None:
    assert bare_run.before == []
    assert bare_run.after == ["pg_ctlcluster", "rabbitmq-server", "redis-server"]
    assert bare_run.example == {"post_status": 202, "get_status": 200, "state": "succeeded"}
