"""A native node from nothing, its stale and failure cases. Real RabbitMQ, no mocks."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pika
import pytest

from course_utils.errors import BrokerStartError, PortInUse
from course_utils.native import amqp_answers, free_offset, release_offset, who_listens

pytestmark = pytest.mark.slow


def _roundtrip(node) -> bytes:
    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.ports.amqp}/%2F")
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.queue_declare(queue="ping", durable=True)
        channel.basic_publish(exchange="", routing_key="ping", body=b"pong")
        for _ in range(50):
            method, _props, body = channel.basic_get(queue="ping", auto_ack=True)
            if method:
                return body
            time.sleep(0.05)
    return b""


def test_start_use_stop_from_nothing(spare_node):
    assert not spare_node.base_dir.exists()
    spare_node.start(timeout=60)
    assert spare_node.is_running()
    assert _roundtrip(spare_node) == b"pong"
    # self-contained: cookie, config and plugins file live under base_dir
    assert (spare_node.home / ".erlang.cookie").exists()
    assert "rabbitmq_stream" in (spare_node.base_dir / "enabled_plugins").read_text()
    plugins = spare_node.ctl("list_queues", "name", "durable", "--quiet")
    assert plugins.returncode == 0 and "ping" in plugins.stdout
    assert spare_node.stop() is True
    assert not spare_node.is_running()
    assert amqp_answers("127.0.0.1", spare_node.ports.amqp) is None


def test_stale_pid_file_is_recovered(spare_node):
    spare_node.base_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spare_node.pid_file.write_text(str(dead.pid))  # left by a node killed without `down`
    assert not spare_node.is_running()
    spare_node.start(timeout=60)
    assert spare_node.is_running() and spare_node.pid() != dead.pid
    assert _roundtrip(spare_node) == b"pong"

def test_a_stale_pid_file_never_signals_the_process_that_reused_the_pid(spare_node):
    """A node that died leaves its pid file; Linux hands the pid out again (pid_max is 32768 here,
    and a suite goes through that). Stopping or killing the node must leave that stranger alone:
    an xdist worker that got such a pid was SIGKILLed mid-run, and xdist then hung."""
    spare_node.base_dir.mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        spare_node.pid_file.write_text(str(stranger.pid))
        assert spare_node.pid() is None and not spare_node.is_running()
        assert spare_node.stop(timeout=1) is False and spare_node.kill(timeout=1) is False
        assert stranger.poll() is None, "the stranger holding the stale pid was signalled"
    finally:
        stranger.kill()
        stranger.wait()



def test_killed_node_restarts(spare_node):
    spare_node.start(timeout=60)
    os.kill(spare_node.pid(), 9)
    time.sleep(0.5)
    spare_node.start(timeout=60)
    assert _roundtrip(spare_node) == b"pong"


def test_boot_failure_shows_log_tail_quickly(spare_node):
    spare_node.extra_config = ("listeners.tcp.1 = isto-nao-e-um-endereco",)
    started = time.monotonic()
    with pytest.raises(BrokerStartError) as err:
        spare_node.start(timeout=30)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "não subiu" in message and "Fim do log" in message
    assert "listeners.tcp.1" in message  # the log tail names the bad setting


def test_port_taken_by_something_else(spare_node):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", spare_node.ports.amqp))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(PortInUse) as err:
            spare_node.start(timeout=30)
        assert time.monotonic() - started < 10
    message = str(err.value)
    assert str(spare_node.ports.amqp) in message
    assert "python" in message.lower()  # the process holding the port is named
    assert who_listens(spare_node.ports.amqp) is None  # released again


def _offset_in_child(start: int) -> int:
    code = f"from course_utils.native import free_offset; print(free_offset(start={start}, lease=True))"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_a_port_block_stays_leased_to_its_process_while_its_node_is_down():
    """A node stopped (or killed) and started again on its ports must find them free: another
    process's free_offset() must not hand them out in between, although nothing listens on them."""
    mine = free_offset(lease=True)
    try:
        assert _offset_in_child(mine) != mine, "another process got the block this one leased"
    finally:
        release_offset(mine)
    assert _offset_in_child(mine) == mine, "the block was released, yet stays taken"
    theirs = _offset_in_child(mine + 1)  # leased by a process that has ended: free for the next one
    assert _offset_in_child(theirs) == theirs
    assert free_offset(start=mine) == free_offset(start=mine), "looking (lease=False) took the block"
