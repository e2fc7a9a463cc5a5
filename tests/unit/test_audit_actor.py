"""Who an audit entry names: a key with its request, or the shell user at a host; and the cursors
the log's pages hand out."""

from __future__ import annotations

import getpass
import socket

import pytest

from app.operate import audit


class Key:
    key_id = "0123456789ab"
    name = "ops-alice"


def test_an_actor_of_a_request_names_its_key_its_request_and_its_address() -> None:
    actor = audit.Actor.of(Key(), request_id="req-1", client_address="10.0.0.7")
    assert actor == audit.Actor("0123456789ab", "ops-alice", "req-1", "10.0.0.7")


def test_the_cli_acts_as_its_os_user_at_its_host_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "deploy")
    monkeypatch.setattr(socket, "gethostname", lambda: "ops-1")
    assert audit.cli_actor() == audit.Actor(None, "cli:deploy@ops-1")


def test_a_user_without_a_name_is_named_by_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    def nameless() -> str:
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.setattr(getpass, "getuser", nameless)
    monkeypatch.setattr(audit.os, "getuid", lambda: 4242)
    assert audit.cli_actor().key_name.startswith("cli:uid4242@")


@pytest.mark.parametrize("cursor", ["", "abc", "-1", "1.5", "²", "9" * 20, str(2**63)])
def test_a_cursor_no_page_handed_out_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        audit.decode_cursor(cursor)


def test_a_cursor_is_the_id_a_page_continues_before() -> None:
    assert audit.decode_cursor("812") == 812
    assert audit.decode_cursor(str(2**63 - 1)) == 2**63 - 1
