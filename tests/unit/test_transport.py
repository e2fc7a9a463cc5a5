"""What every process that reaches RabbitMQ makes of BROKER_URL and BROKER_QUEUE_TYPE."""

from __future__ import annotations

from typing import Any, cast

import pytest
from pydantic import ValidationError

from app.errors import QueueTypeMismatch
from app.execution.consumer import ClaimingBroker
from app.jobs.registry import MAX_PRIORITY
from app.settings import Settings
from app.transport import rabbitmq

NODES = "amqp://u:p@a:5672/%2F;amqp://u:p@b:5673/;  amqp://u:p@c:5674/v ;"


def test_a_node_list_gives_one_connection_parameter_set_per_node_in_order() -> None:
    nodes = rabbitmq.node_parameters(NODES, heartbeat=7)
    assert [(n.host, n.port, n.virtual_host, n.heartbeat) for n in nodes] == [
        ("a", 5672, "/", 7),
        ("b", 5673, "/", 7),
        ("c", 5674, "v", 7),
    ]


def test_the_worker_broker_takes_a_node_list_with_its_heartbeat_on_every_node() -> None:
    broker = ClaimingBroker(
        url=NODES,
        middleware=[],
        claims=cast(Any, None),  # never asked: nothing is consumed here
        max_priority=MAX_PRIORITY,
        heartbeat_seconds=9,
        hold_seconds=1.0,
        queue_type="quorum",
    )
    assert [(n.host, n.heartbeat) for n in broker.parameters] == [("a", 9), ("b", 9), ("c", 9)]
    assert broker._build_queue_arguments("default") == rabbitmq.queue_arguments("default", "quorum")


def test_quorum_queues_carry_their_type_and_no_priority_and_classic_ones_their_priority() -> None:
    quorum = rabbitmq.queue_arguments("default", "quorum")
    assert quorum == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "default.XQ",
        "x-queue-type": "quorum",
    }
    classic = rabbitmq.queue_arguments("default", "classic")
    assert classic["x-max-priority"] == MAX_PRIORITY
    assert "x-queue-type" not in classic
    assert rabbitmq.dead_letter_arguments("quorum")["x-queue-type"] == "quorum"
    assert "x-queue-type" not in rabbitmq.dead_letter_arguments("classic")


def test_a_type_mismatch_names_the_queue_the_setting_and_the_way_out() -> None:
    message = str(QueueTypeMismatch("email", "quorum", "inequivalent arg 'x-queue-type'"))
    assert "'email'" in message
    assert "BROKER_QUEUE_TYPE=quorum" in message
    assert "new vhost" in message
    assert "conveyor queues migrate" in message


# What RabbitMQ 3.10 answers when a queue is declared over one of the other type.
OVER_CLASSIC = (
    "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'default' in vhost 'v': "
    "received none but current is the value '9' of type 'signedint'"
)
OVER_QUORUM = (
    "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost 'v': "
    "received none but current is the value 'quorum' of type 'longstr'"
)
OVER_STREAM = OVER_QUORUM.replace("'quorum'", "'stream'")


def test_a_type_mismatch_says_the_type_the_queue_has_from_the_brokers_refusal() -> None:
    assert QueueTypeMismatch("default", "quorum", OVER_CLASSIC).has == "classic"
    assert QueueTypeMismatch("q", "classic", OVER_QUORUM).has == "quorum"
    assert QueueTypeMismatch("q", "classic", OVER_STREAM).has == "stream"
    one = str(QueueTypeMismatch("default", "quorum", OVER_CLASSIC))
    assert one.startswith("queue 'default' is a classic queue, but BROKER_QUEUE_TYPE=quorum")
    assert "set BROKER_QUEUE_TYPE back to classic" in one
    many = str(QueueTypeMismatch("default", "quorum", OVER_CLASSIC, others=["default.XQ", "email"]))
    assert many.startswith("queues 'default', 'default.XQ', 'email' are classic queues")


def test_production_refuses_a_development_password_on_any_node_of_the_list() -> None:
    nodes = "amqp://conveyor:a-long-secret@a:5672/;amqp://guest:guest@b:5672/"
    with pytest.raises(ValidationError, match="BROKER_URL has no password or a development one"):
        Settings(
            environment="production",
            broker_url=nodes,
            database_url="postgresql+psycopg://conveyor:a-long-secret@db/conveyor",
        )


GONE_FIRST = "amqp://u:p@rabbitmq-gone.invalid:5672/;amqp://u:p@127.0.0.1:5673/;amqp://u:p@localhost:5674/"


def test_a_node_whose_name_does_not_resolve_is_left_out_of_the_list_connections_are_made_over() -> None:
    nodes = rabbitmq.resolvable(rabbitmq.node_parameters(GONE_FIRST))
    assert [(n.host, n.port) for n in nodes] == [("127.0.0.1", 5673), ("localhost", 5674)]


def test_a_list_where_no_name_resolves_is_kept_whole_for_the_resolver_to_name_the_error() -> None:
    nodes = rabbitmq.node_parameters("amqp://u:p@a.invalid:5672/;amqp://u:p@b.invalid:5672/")
    assert [n.host for n in rabbitmq.resolvable(nodes)] == ["a.invalid", "b.invalid"]


def test_the_worker_broker_connects_over_the_nodes_that_resolve_at_each_connection() -> None:
    broker = ClaimingBroker(
        url=GONE_FIRST,
        middleware=[],
        claims=cast(Any, None),
        max_priority=MAX_PRIORITY,
        heartbeat_seconds=9,
        hold_seconds=1.0,
        queue_type="quorum",
    )
    assert [(n.host, n.heartbeat) for n in broker.parameters] == [("127.0.0.1", 9), ("localhost", 9)]
