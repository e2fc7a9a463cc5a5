"""Quorum queues on a 3-node cluster: what Conveyor declares, and a type it cannot change."""

from __future__ import annotations

import pika
import pytest
from dramatiq import Message

from app.errors import PublishFailed, QueueTypeMismatch
from app.transport import rabbitmq
from app.transport.confirms import ConfirmingPublisher
from tests.cluster.conftest import OnCluster


def queue_types(on_cluster: OnCluster) -> dict[str, str]:
    out = on_cluster.cluster.ctl(
        0, "list_queues", "-p", on_cluster.vhost, "name", "type", "--no-table-headers"
    )
    return dict(line.split() for line in out.splitlines() if line.strip())


def doorbell(queue: str = "default") -> Message[None]:
    return Message(queue_name=queue, actor_name="app.tasks.example.echo", args=(), kwargs={}, options={})


def test_the_relay_and_a_worker_declare_every_queue_as_a_quorum_queue_without_priorities(
    on_cluster: OnCluster,
) -> None:
    publisher = ConfirmingPublisher(on_cluster.url(), queue_type="quorum")
    try:
        publisher.publish([(doorbell(), 5)])
    finally:
        publisher.close()
    on_cluster.start()
    worker = on_cluster.start_worker(threads=2)
    on_cluster.ledger.wait_until(
        lambda: {"email.XQ", "exports.XQ"} <= set(queue_types(on_cluster)), 60, "a worker's queues declared"
    )
    types = queue_types(on_cluster)
    assert {f"{q}{s}" for q in ("default", "email", "exports") for s in ("", ".DQ", ".XQ")} <= set(types)
    assert set(types.values()) == {"quorum"}, types
    assert worker.alive(), worker.log()[-3000:]


def test_a_declare_over_a_queue_of_the_other_type_is_one_error_naming_the_queue_the_setting_and_the_way_out(
    on_cluster: OnCluster,
) -> None:
    connection = pika.BlockingConnection(rabbitmq.node_parameters(on_cluster.url()))
    try:
        rabbitmq.declare(connection.channel(), "default", "quorum")
        with pytest.raises(QueueTypeMismatch) as raised:
            rabbitmq.declare(connection.channel(), "default", "classic")
    finally:
        connection.close()
    message = str(raised.value)
    assert "'default'" in message
    assert "BROKER_QUEUE_TYPE=classic" in message
    assert "vhost" in message

    publisher = ConfirmingPublisher(on_cluster.url(), queue_type="classic")
    try:
        with pytest.raises(PublishFailed, match="BROKER_QUEUE_TYPE"):
            publisher.publish([(doorbell(), 0)])
    finally:
        publisher.close()


def test_a_node_list_reaches_the_cluster_through_its_first_node_that_answers(on_cluster: OnCluster) -> None:
    down = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1
    url = ";".join([down, on_cluster.cluster.nodes[1].url(on_cluster.vhost)])
    publisher = ConfirmingPublisher(url, queue_type="quorum")
    try:
        publisher.publish([(doorbell(), 0)] * 3)
    finally:
        publisher.close()
    assert rabbitmq.depths(url, ["default"]) == {"default": 3}


def test_a_batch_the_broker_refuses_in_part_fails_whole(on_cluster: OnCluster) -> None:
    # A classic queue holds to its length exactly; a quorum queue may run past it a little.
    on_cluster.cluster.ctl(
        0, "set_policy", "-p", on_cluster.vhost, "--apply-to", "queues", "one-message",
        "^default$", '{"max-length": 1, "overflow": "reject-publish"}',
    )  # fmt: skip
    publisher = ConfirmingPublisher(on_cluster.url(), queue_type="classic")
    try:
        publisher.publish([(doorbell(), 0)])
        with pytest.raises(PublishFailed, match=r"refused 3 of 3 messages \(basic.nack\)"):
            publisher.publish([(doorbell(), 0)] * 3)
        publisher.publish([])  # nothing to publish is never a failure
    finally:
        publisher.close()
    assert rabbitmq.depths(on_cluster.url(), ["default"]) == {"default": 1}
