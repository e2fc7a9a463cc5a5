"""`DATABASE_URL` as libpq reads it, for the processes' own psycopg connections and pools.

The setting is a SQLAlchemy URL, and may name several hosts (a primary and its standbys) in
either of two forms, both read by SQLAlchemy's engines:

- SQLAlchemy's, for psycopg: `postgresql+psycopg://u@/db?host=a:5432&host=b:5433&target_session_attrs=read-write`
- libpq's: `postgresql+psycopg://u@/db?host=a,b&port=5432,5433&target_session_attrs=read-write`

libpq reads only the second, so the psycopg connections (the API's group commit, the relay's,
the worker's claims and batchers, the event listeners) get the setting through `conninfo`,
which writes both as one libpq conninfo: `host=a,b port=5432,5433 ...`.
"""

from __future__ import annotations

from collections.abc import Mapping

from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from app.settings import get_settings

# URL parts SQLAlchemy reads and libpq spells otherwise (or does not know).
_SQLALCHEMY_ONLY = frozenset({"host", "port"})


def conninfo(database_url: str, failover_seconds: float | None = None) -> str:
    """The libpq conninfo of a `DATABASE_URL`, whichever form its host list takes; with
    `failover_seconds` (`DB_FAILOVER_SECONDS`), also the `failover_options` it does not set.

    Raises ValueError for a URL that mixes the forms (ports both in `host=` and `port=`).
    """
    url = make_url(database_url)
    hosts, ports = _hosts(url.host, url.port, url.query)
    params: dict[str, str] = {}
    if url.database:
        params["dbname"] = url.database
    if url.username:
        params["user"] = url.username
    if url.password is not None:
        params["password"] = str(url.password)
    if hosts:
        params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)
    for key, value in url.query.items():
        if key not in _SQLALCHEMY_ONLY:
            params[key] = value if isinstance(value, str) else value[-1]
    if failover_seconds is not None:
        params = failover_options(failover_seconds) | _writer(len(hosts)) | params
    return make_conninfo("", **params)


def connect_options(database_url: str, failover_seconds: float) -> dict[str, str]:
    """What `conninfo` adds to a URL, as the `connect_args` of a SQLAlchemy engine (which reads
    the URL itself): those of `failover_options`, and `target_session_attrs=read-write` for a
    URL of several hosts that does not say which to pick (libpq would take the first that
    answers, a standby as soon as the primary is away, and every write would be refused)."""
    url = make_url(database_url)
    hosts, _ = _hosts(url.host, url.port, url.query)
    given = set(url.query) | {"host", "port"}
    options = failover_options(failover_seconds) | _writer(len(hosts))
    return {key: value for key, value in options.items() if key not in given}


def _writer(hosts: int) -> dict[str, str]:
    return {"target_session_attrs": "read-write"} if hosts > 1 else {}


def failover_options(seconds: float) -> dict[str, str]:
    """libpq options that end a connection to a server gone without a word (a primary lost to
    a power cut or a partition sends no reset) well within `seconds`: keepalives on idle
    connections (a LISTEN, a pooled one), a send timeout on busy ones. The process then
    reconnects, and libpq walks the host list to whichever server now takes writes."""
    idle = max(1, int(seconds / 3))
    interval = max(1, int(seconds / 10))
    return {
        "keepalives": "1",
        "keepalives_idle": str(idle),
        "keepalives_interval": str(interval),
        "keepalives_count": "3",
        "tcp_user_timeout": str(int(seconds * 1000 / 2)),
    }


def own_conninfo() -> str:
    """This process's conninfo: `DATABASE_URL` with the options of `DB_FAILOVER_SECONDS`."""
    settings = get_settings()
    return conninfo(settings.database_url, settings.db_failover_seconds)


def _hosts(
    host: str | None, port: int | None, query: Mapping[str, str | tuple[str, ...]]
) -> tuple[list[str], list[str]]:
    """The hosts and their ports (an empty string: the default port), in the order given."""
    if host:
        return [host], [str(port) if port else ""]
    listed = _values(query.get("host"))
    named_ports = [port for value in _values(query.get("port")) for port in value.split(",")]
    hosts: list[str] = []
    ports: list[str] = []
    for value in listed:
        for part in value.split(","):
            name, port_of_host = _split_port(part)
            hosts.append(name)
            ports.append(port_of_host)
    if any(ports):
        if named_ports:
            raise ValueError("DATABASE_URL gives ports both in host=name:port and in port=")
        return hosts, ports
    return hosts, named_ports  # libpq's form: one port for all, or one per host


def _values(value: str | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _split_port(host: str) -> tuple[str, str]:
    """`name:port` as (name, port); a socket directory (`/run/postgresql`) or a bare name as
    (host, ""). An IPv6 address is written in brackets: `[::1]:5432`."""
    if host.startswith("/"):
        return host, ""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest.removeprefix(":")
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return name, port
    return host, ""
