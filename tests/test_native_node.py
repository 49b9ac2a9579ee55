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


def test_a_start_that_times_out_kills_the_node_it_started(spare_node):
    """A failed start leaves nothing running: the half-booted node is killed, and the next start
    (with time enough) works on the same data folder."""
    with pytest.raises(BrokerStartError, match="nada ficou rodando"):
        spare_node.start(timeout=0.5)  # no node boots in half a second, and its log is still new
    assert not spare_node.is_running()
    assert amqp_answers("127.0.0.1", spare_node.ports.amqp) is None
    leftover = subprocess.run(["pgrep", "-f", f"-sname {spare_node.node_name}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"processes of the killed node remain: {leftover.stdout}"
    spare_node.start(timeout=60)
    assert _roundtrip(spare_node) == b"pong"


class _SlowBoot:
    """Stands in for a node's boot in `NativeNode.wait` (its own process and ports are not the
    point here): answers after `boot_s`, its log written every 0.3 s while `logging`."""

    def __init__(self, node, boot_s: float, logging: bool):
        self.node, self.ready_at, self.logging = node, time.monotonic() + boot_s, logging
        node.node_log.parent.mkdir(parents=True, exist_ok=True)
        node.node_log.write_text("")
        os.utime(node.node_log, (time.time() - 60, time.time() - 60))
        node.answers = lambda: time.monotonic() >= self.ready_at

    def __enter__(self):
        import threading
        self.stop = threading.Event()

        def write():
            while self.logging and not self.stop.wait(0.3):
                with open(self.node.node_log, "a") as log:
                    log.write("Recovering 0 queues of type rabbit_classic_queue\n")
        self.thread = threading.Thread(target=write, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_a_node_whose_log_grows_gets_more_than_the_timeout(spare_node):
    """A course broker with some hundred vhosts took 62 s to boot and `curso broker up` gave up at
    60: a node past its timeout that still writes its log is booting, and it is waited for."""
    with _SlowBoot(spare_node, boot_s=2.5, logging=True):
        spare_node.wait(timeout=1)  # answers at 2.5 s, within 4 × 1 s


def test_a_silent_node_is_given_up_at_the_timeout(spare_node):
    with _SlowBoot(spare_node, boot_s=2.5, logging=False):
        started = time.monotonic()
        with pytest.raises(BrokerStartError, match="esperei 1 s"):
            spare_node.wait(timeout=1)
        assert time.monotonic() - started < 2


def test_the_grace_has_a_cap(spare_node):
    with _SlowBoot(spare_node, boot_s=30, logging=True):
        started = time.monotonic()
        with pytest.raises(BrokerStartError):
            spare_node.wait(timeout=0.5)
        assert time.monotonic() - started < 3  # 4 × 0.5 s, then it gives up although the log grows
