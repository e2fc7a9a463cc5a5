"""A database and a RabbitMQ vhost of this test run's own, created once and dropped after."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from urllib.parse import quote

import psycopg

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP_HOSTPORT = ("127.0.0.1", 5672)


@dataclass(frozen=True)
class Infra:
    database: str
    vhost: str

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}"

    @property
    def libpq_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.database}"

    @property
    def broker_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{quote(self.vhost, safe='')}"


def new_infra() -> Infra:
    run = f"{os.getpid()}_{secrets.token_hex(3)}"
    return Infra(database=f"conveyor_test_{run}", vhost=f"conveyor_test_{run}")


def postgres_problem() -> str | None:
    """None when PostgreSQL answers; else why not."""
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
        return None
    except psycopg.Error as error:
        return f"PostgreSQL on 127.0.0.1:5432: {str(error).strip().splitlines()[-1]}"


def rabbitmq_problem() -> str | None:
    """None when RabbitMQ accepts connections; else why not."""
    try:
        socket.create_connection(AMQP_HOSTPORT, timeout=3).close()
        return None
    except OSError as error:
        return f"RabbitMQ on 127.0.0.1:5672: {error}"


def rabbitmqctl(*args: str) -> None:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([exe, "-q", *args], check=True, capture_output=True, timeout=60)


def create(infra: Infra) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{infra.database}"')
    rabbitmqctl("add_vhost", infra.vhost)
    rabbitmqctl("set_permissions", "-p", infra.vhost, "guest", ".*", ".*", ".*")


def drop(infra: Infra) -> None:
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{infra.database}" WITH (FORCE)')
    finally:
        rabbitmqctl("delete_vhost", infra.vhost)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
