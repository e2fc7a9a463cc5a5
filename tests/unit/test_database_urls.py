"""A `DATABASE_URL` naming several hosts reaches libpq as one conninfo, whichever form it takes."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from app.ledger.urls import connect_options, conninfo

SQLALCHEMY_FORM = (
    "postgresql+psycopg://postgres@/conveyor?host=10.0.0.1:5441&host=10.0.0.2:5442"
    "&target_session_attrs=read-write"
)
LIBPQ_FORM = (
    "postgresql+psycopg://postgres@/conveyor?host=10.0.0.1,10.0.0.2&port=5441,5442"
    "&target_session_attrs=read-write"
)
MULTI_HOST = {
    "dbname": "conveyor",
    "user": "postgres",
    "host": "10.0.0.1,10.0.0.2",
    "port": "5441,5442",
    "target_session_attrs": "read-write",
}


def test_sqlalchemys_form_gives_libpq_every_host_with_its_port() -> None:
    assert conninfo_to_dict(conninfo(SQLALCHEMY_FORM)) == MULTI_HOST


def test_libpqs_form_gives_the_same_conninfo() -> None:
    assert conninfo_to_dict(conninfo(LIBPQ_FORM)) == MULTI_HOST


def test_a_plain_url_keeps_its_host_port_password_and_options() -> None:
    url = "postgresql+psycopg://app:p%40ss@db.internal:6432/ledger?sslmode=require&application_name=x"
    assert conninfo_to_dict(conninfo(url)) == {
        "dbname": "ledger",
        "user": "app",
        "password": "p@ss",
        "host": "db.internal",
        "port": "6432",
        "sslmode": "require",
        "application_name": "x",
    }


def test_a_url_without_the_driver_suffix_reads_the_same() -> None:
    assert conninfo(SQLALCHEMY_FORM.replace("+psycopg", "")) == conninfo(SQLALCHEMY_FORM)


def test_hosts_without_ports_take_the_default_one_and_a_socket_directory_stays_whole() -> None:
    url = "postgresql+psycopg://postgres@/conveyor?host=/run/postgresql&host=b:5433"
    assert conninfo_to_dict(conninfo(url))["host"] == "/run/postgresql,b"
    assert conninfo_to_dict(conninfo(url))["port"] == ",5433"


def test_one_port_given_libpqs_way_serves_every_host() -> None:
    url = "postgresql+psycopg://postgres@/conveyor?host=a,b&port=5433"
    assert conninfo_to_dict(conninfo(url)) == {
        "dbname": "conveyor",
        "user": "postgres",
        "host": "a,b",
        "port": "5433",
    }


def test_ports_given_both_ways_are_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="both"):
        conninfo("postgresql+psycopg://postgres@/conveyor?host=a:5441&host=b:5442&port=5441,5442")


def test_the_failover_setting_bounds_how_long_a_silent_server_keeps_a_connection() -> None:
    options = conninfo_to_dict(conninfo(LIBPQ_FORM, failover_seconds=30))
    assert options["keepalives"] == "1"
    idle, interval, count = (
        int(options[k]) for k in ("keepalives_idle", "keepalives_interval", "keepalives_count")
    )
    assert idle + interval * count <= 30
    assert int(options["tcp_user_timeout"]) <= 30_000


def test_several_hosts_without_a_session_kind_get_read_write_and_a_given_one_is_kept() -> None:
    unsaid = LIBPQ_FORM.replace("&target_session_attrs=read-write", "")
    assert conninfo_to_dict(conninfo(unsaid, failover_seconds=30))["target_session_attrs"] == "read-write"
    assert connect_options(unsaid, 30)["target_session_attrs"] == "read-write"
    said = LIBPQ_FORM.replace("read-write", "primary")
    assert conninfo_to_dict(conninfo(said, failover_seconds=30))["target_session_attrs"] == "primary"
    assert "target_session_attrs" not in connect_options(said, 30)


def test_one_host_gets_no_session_kind_and_its_own_keepalives_stay() -> None:
    url = "postgresql+psycopg://postgres@db:5432/conveyor?keepalives_idle=2"
    assert "target_session_attrs" not in conninfo_to_dict(conninfo(url, failover_seconds=30))
    assert conninfo_to_dict(conninfo(url, failover_seconds=30))["keepalives_idle"] == "2"
    assert "keepalives_idle" not in connect_options(url, 30)
