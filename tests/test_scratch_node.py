"""The throwaway node of chapter 4: a real RabbitMQ restarted and crashed, never the course broker."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pika
import pytest

from course_utils.native import amqp_answers, pid_alive
from course_utils.scratch_node import ScratchNodeUnavailable, _sweep_stale, available, scratch_node

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="RabbitMQ (OS package) not installed")]

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
TRANSIENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient)


def _bodies(node, queue: str) -> list[bytes]:
    with pika.BlockingConnection(node.params()) as connection:
        channel = connection.channel()
        out = []
        while True:
            method, _props, body = channel.basic_get(queue=queue, auto_ack=False)
            if method is None:
                return out
            out.append(body)


def test_only_persistent_messages_in_a_durable_queue_survive(course_broker):
    course_before = course_broker.management().overview()["node"]
    with scratch_node("teste") as node:
        folder = node.base_dir
        assert node.is_running() and folder.exists()
        assert node.ports.amqp != course_broker.port
        assert node.management.overview()["node"] == node.name != course_before
        with pika.BlockingConnection(node.params()) as connection:
            channel = connection.channel()
            channel.queue_declare(queue="duravel", durable=True)
            channel.confirm_delivery()
            channel.basic_publish(exchange="", routing_key="duravel", body=b"persistente", properties=PERSISTENT)
            channel.basic_publish(exchange="", routing_key="duravel", body=b"transitoria", properties=TRANSIENT)
            assert channel.queue_declare(queue="duravel", durable=True, passive=True).method.message_count == 2

        seconds = node.restart()
        assert node.is_running() and seconds > 0
        assert _bodies(node, "duravel") == [b"persistente"]

        # Confirmed persistent messages survive a crash (SIGKILL) too.
        with pika.BlockingConnection(node.params()) as connection:
            channel = connection.channel()
            channel.queue_declare(queue="confirmadas", durable=True)
            channel.confirm_delivery()
            for i in range(20):
                channel.basic_publish(exchange="", routing_key="confirmadas", body=str(i).encode(),
                                      properties=PERSISTENT)
        pid = node.node.pid()
        node.restart(kill=True)
        assert not pid_alive(pid) and node.node.pid() != pid
        assert _bodies(node, "confirmadas") == [str(i).encode() for i in range(20)]
        port = node.ports.amqp
    assert node.closed and not folder.exists()
    assert amqp_answers("127.0.0.1", port) is None
    assert course_broker.management().overview()["node"] == course_before  # the course broker is untouched


def test_node_dies_with_the_process_that_started_it():
    script = textwrap.dedent("""
        import sys, time
        from course_utils.scratch_node import scratch_node
        node = scratch_node("orfao")
        print(node.node.pid(), node.base_dir, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line, "the child did not start a node"
        pid = int(line[0])
        assert pid_alive(pid)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(pid), "the throwaway node outlived the process that started it"
    # The folder left behind is swept by the next scratch node (not started here: that is slow).
    _sweep_stale()
    assert not Path(line[1]).exists()


def test_without_rabbitmq_installed_the_error_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("CURSO_RABBITMQ_SERVER", str(tmp_path / "nao-existe" / "rabbitmq-server"))
    assert not available()
    before = set(Path(tempfile.gettempdir()).glob("curso-descartavel-*"))
    with pytest.raises(ScratchNodeUnavailable) as err:
        scratch_node("teste")
    message = str(err.value)
    assert "não está instalado" in message and "Docker" in message and "apt-get install" in message
    assert set(Path(tempfile.gettempdir()).glob("curso-descartavel-*")) == before
