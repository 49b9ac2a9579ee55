"""A real RabbitMQ 4.x (Debian 13's package in a chroot, course_utils.rabbit4) beside the 3.10 broker.

One 4.x node per test session (per pytest-xdist worker), configured like RabbitMQ 4.3's defaults
(DENY_LIKE_4_3), is shared by most tests; a second one with 4.0's own defaults shows what 4.3
changed. Every rule of strict mode is tried with strict mode OFF against the 4.x node, and the node's
verdict is compared with strict mode's. docs/rabbitmq-versions.md points at these tests.
"""
from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pika
import pytest

from course_utils import broker as b
from course_utils import cli, setup, strict
from course_utils import rabbit4 as r4
from course_utils.errors import BrokerNotFound, BrokerStartError, StrictModeError
from course_utils.management import Management, ManagementError
from course_utils.native import Ports, amqp_answers, free_offset, pid_alive, release_offset
from course_utils.rabbit4 import (DENY_LIKE_4_3, Rabbit4Node, Rabbit4Unavailable, ensure_rootfs,
                                  mounts_under, rootfs_ok, unmount_under)

pytestmark = pytest.mark.slow

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
IS_ROOT = os.name == "posix" and os.geteuid() == 0


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


@dataclass
class Target:
    """A broker to probe: the 4.x node, the 4.0-defaults node or the 3.10 course broker."""

    label: str
    params: pika.URLParameters
    management: Management
    vhost: str

    @property
    def version(self) -> str:
        return self.management.version()


def _start(node: Rabbit4Node) -> float:
    started = time.monotonic()
    try:
        node.start(timeout=90)
    except Rabbit4Unavailable as exc:
        pytest.skip(f"sem nó RabbitMQ 4.x aqui: {exc}")
    return time.monotonic() - started


def _target(label: str, node: Rabbit4Node) -> Target:
    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.ports.amqp}/%2F")
    params.connection_attempts, params.socket_timeout, params.blocked_connection_timeout = 1, 10, 10
    return Target(label, params, Management(f"http://127.0.0.1:{node.ports.management}", "guest", "guest", "/"), "/")


@pytest.fixture(scope="session")
def rabbit4_node(tmp_path_factory):
    """THE 4.x node of this session/worker: 4.0 denying what 4.3 denies by default. It dies with
    the test process (die_with_parent) even if the session is killed."""
    cached = rootfs_ok(r4.rootfs_dir())
    offset = free_offset(lease=True)  # leased: another worker's node cannot pick it before ours binds
    node = Rabbit4Node(tmp_path_factory.mktemp("no4x") / "node", name=f"teste4-{WORKER}-{os.getpid()}",
                       ports=Ports.offset(offset), die_with_parent=True)
    node.boot_seconds = _start(node)
    node.rootfs_was_cached = cached
    yield node
    node.stop()
    release_offset(offset)


@pytest.fixture(scope="session")
def rabbit4(rabbit4_node) -> Target:
    return _target("4.x (padrões do 4.3)", rabbit4_node)


@pytest.fixture(scope="session")
def rabbit40(tmp_path_factory):
    """A 4.0 node with 4.0's own defaults (deprecated features permitted): what 4.3 changed."""
    offset = free_offset(lease=True)
    node = Rabbit4Node(tmp_path_factory.mktemp("no40") / "node", name=f"teste40-{WORKER}-{os.getpid()}",
                       ports=Ports.offset(offset), die_with_parent=True, deny_like_4_3=False)
    _start(node)
    yield _target("4.0 (padrões do 4.0)", node)
    node.stop()
    release_offset(offset)


@pytest.fixture(scope="session")
def rabbit310(course_broker):
    """The 3.10 course broker, in a vhost of this module's own."""
    curso = setup("teste-r4-310")
    yield Target("3.10", curso.params(), curso.management, curso.vhost)
    curso.cleanup(delete_vhost=True)


@pytest.fixture(params=["3.10", "4.x"])
def each(request) -> Target:
    return request.getfixturevalue({"3.10": "rabbit310", "4.x": "rabbit4"}[request.param])


@contextlib.contextmanager
def strict_off():
    """Strict mode is on in every test (conftest); the probes must reach the broker as written."""
    was = strict.is_enabled()
    strict.disable()
    try:
        yield
    finally:
        if was:
            strict.enable()


@dataclass
class Outcome:
    accepted: bool
    code: int | None = None
    text: str = ""
    closed: str = ""  # what the broker closed: "conexão" or "canal"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}" if name else ""


def declare(target: Target, kwargs: dict) -> Outcome:
    """queue_declare exactly as given (strict mode off) on a fresh connection; the queue is deleted."""
    kwargs = {**kwargs, "queue": unique(kwargs.get("queue", ""))}
    with strict_off():
        connection = pika.BlockingConnection(target.params)
        try:
            channel = connection.channel()
            try:
                name = channel.queue_declare(**kwargs).method.queue
            except pika.exceptions.ChannelClosedByBroker as exc:
                return Outcome(False, exc.reply_code, exc.reply_text, "canal")
            except pika.exceptions.ConnectionClosedByBroker as exc:
                return Outcome(False, exc.reply_code, exc.reply_text, "conexão")
            channel.queue_delete(name)
            return Outcome(True)
        finally:
            if connection.is_open:
                connection.close()


def strict_verdict(kwargs: dict) -> str | None:
    """Strict mode's own rule for this declaration: its pt-BR refusal, or None if it lets it through."""
    try:
        strict.check_queue_declare(kwargs.get("queue", ""), kwargs.get("passive", False),
                                   kwargs.get("durable", False), kwargs.get("exclusive", False),
                                   kwargs.get("arguments"))
    except StrictModeError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# The node itself.

def test_node_boots_as_4x_and_reports_its_version(rabbit4_node, rabbit4):
    from_api = rabbit4.version
    from_cli = rabbit4_node.version()
    assert from_api == from_cli
    assert version_tuple(from_api) >= (4, 0), from_api
    with pika.BlockingConnection(rabbit4.params) as connection:  # AMQP works, durable round trip
        channel = connection.channel()
        queue = unique("ping")
        channel.queue_declare(queue, durable=True)
        channel.basic_publish("", queue, b"pong")
        for _ in range(50):
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method:
                break
            time.sleep(0.05)
        assert body == b"pong"
        channel.queue_delete(queue)
    if rabbit4_node.rootfs_was_cached:
        assert rabbit4_node.boot_seconds < 12, f"partida em {rabbit4_node.boot_seconds:.1f} s"


def test_node_is_configured_like_the_course_nodes(rabbit4_node, rabbit4):
    wanted = {"amqp", "http", "http/prometheus", "stream"}
    deadline = time.monotonic() + 15  # on a busy machine the overview lists the listeners a little late
    while True:
        listeners = {item["protocol"]: item for item in rabbit4.management.overview().get("listeners", [])}
        if wanted <= set(listeners) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert wanted <= set(listeners), listeners
    plugins = (rabbit4_node.base_dir / "enabled_plugins").read_text()
    assert all(p in plugins for p in ("rabbitmq_management", "rabbitmq_prometheus", "rabbitmq_stream"))
    conf = (rabbit4_node.base_dir / "rabbitmq.conf").read_text()
    assert all(line in conf.splitlines() for line in DENY_LIKE_4_3)
    assert "sample_retention_policies" in (rabbit4_node.base_dir / "advanced.config").read_text()  # FAST_STATS
    # Every port of its block listens on 127.0.0.1 only.
    listening = _listening_addresses()
    for label, port in rabbit4_node.ports.all().items():
        assert listening.get(port) == {"127.0.0.1"}, (label, port, listening.get(port))
    # FAST_STATS: queue depths show in the management API within ~1 s, not 5.
    with pika.BlockingConnection(rabbit4.params) as connection:
        channel = connection.channel()
        queue = unique("stats")
        channel.queue_declare(queue, durable=True)
        for i in range(3):
            channel.basic_publish("", queue, b"x")
        started = time.monotonic()
        while time.monotonic() - started < 4:
            if rabbit4.management.queue(queue).get("messages") == 3:
                break
            time.sleep(0.1)
        assert rabbit4.management.queue(queue).get("messages") == 3
        assert time.monotonic() - started < 4
        channel.queue_delete(queue)


def _listening_addresses() -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] != "0A":
                continue
            address, port = parts[1].rsplit(":", 1)
            if v6:
                text = "::1" if address == "0" * 31 + "1" else ("::" if set(address) == {"0"} else address)
            else:
                text = ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
            found.setdefault(int(port, 16), set()).add(text)
    return found


# ---------------------------------------------------------------------------------------------
# Strict mode against the real node: every rule, with strict mode off.

# (id, queue_declare arguments). The first group is what strict mode refuses, the second what it lets
# through; the verdict itself always comes from strict.check_queue_declare, never from this list.
DECLARE_CASES = [
    ("transitoria-nomeada", {"queue": "x"}),
    ("transitoria-sem-nome", {"queue": ""}),
    ("transitoria-auto-delete", {"queue": "x", "auto_delete": True}),
    ("quorum-nao-duravel", {"queue": "x", "arguments": {"x-queue-type": "quorum"}}),
    ("modo-lazy", {"queue": "x", "durable": True, "arguments": {"x-queue-mode": "lazy"}}),
    ("modo-default", {"queue": "x", "durable": True, "arguments": {"x-queue-mode": "default"}}),
    ("versao-1", {"queue": "x", "durable": True, "arguments": {"x-queue-version": 1}}),
    ("exclusiva-lazy", {"queue": "", "exclusive": True, "arguments": {"x-queue-mode": "lazy"}}),
    ("duravel", {"queue": "x", "durable": True}),
    ("duravel-auto-delete", {"queue": "x", "durable": True, "auto_delete": True}),
    ("exclusiva-sem-nome", {"queue": "", "exclusive": True}),
    ("exclusiva-nomeada", {"queue": "x", "exclusive": True}),
    ("exclusiva-duravel", {"queue": "x", "exclusive": True, "durable": True}),
    ("quorum", {"queue": "x", "durable": True, "arguments": {"x-queue-type": "quorum"}}),
    ("stream", {"queue": "x", "durable": True, "arguments": {"x-queue-type": "stream"}}),
    ("versao-2", {"queue": "x", "durable": True, "arguments": {"x-queue-version": 2}}),
    ("ttl-da-fila", {"queue": "x", "durable": True, "arguments": {"x-expires": 60000}}),
]

# RabbitMQ 4.3.0 removed CQv1 and lazy mode: its release notes say x-queue-mode (any value) and
# x-queue-version=1 make the declaration fail. 4.0 accepts both and ignores them (4.0.5's
# rabbit_variable_queue: "Queue mode has been unified", "Queue version now ignored"), so a 4.0 node
# cannot show this refusal; strict mode follows 4.3 here.
ONLY_FROM_4_3 = {"x-queue-mode", "x-queue-version"}


@pytest.mark.parametrize("kwargs", [c[1] for c in DECLARE_CASES], ids=[c[0] for c in DECLARE_CASES])
def test_queue_declare_verdict_matches_the_node(rabbit4, kwargs):
    verdict = strict_verdict(kwargs)
    outcome = declare(rabbit4, kwargs)
    if verdict is None:
        assert outcome.accepted, f"o modo estrito deixa passar, o nó {rabbit4.version} recusou: {outcome}"
        return
    if verdict.startswith(strict.TRANSIENT_QUEUE.split("{what}")[0]):
        # What strict mode promises: "a conexão seria fechada com o erro 541".
        assert not outcome.accepted and (outcome.code, outcome.closed) == (541, "conexão"), outcome
        assert "transient_nonexcl_queues" in outcome.text
        return
    argument = next(a for a in ONLY_FROM_4_3 if a in (kwargs.get("arguments") or {}))
    if version_tuple(rabbit4.version) >= (4, 3):
        assert not outcome.accepted, f"o 4.3 devia recusar {argument}: {outcome}"
    else:
        assert outcome.accepted, f"o 4.0 aceita (e ignora) {argument}: {outcome}"


def test_passive_declare_is_left_alone_by_both(rabbit4):
    queue = unique("existente")
    with strict_off(), pika.BlockingConnection(rabbit4.params) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        assert strict_verdict({"queue": queue, "passive": True}) is None
        assert channel.queue_declare(queue, passive=True).method.queue == queue  # flags ignored
        channel.queue_delete(queue)


def _prefetched(target: Target, global_qos: bool) -> tuple[int, bool]:
    """basic_qos(prefetch_count=1, global_qos) then two consumers on two queues of 3 messages each,
    no acks: 1 delivery = one limit for the whole channel (global), 2 = one per consumer."""
    queues = [unique("qos-a"), unique("qos-b")]
    with strict_off(), pika.BlockingConnection(target.params) as connection:
        channel = connection.channel()
        for queue in queues:
            channel.queue_declare(queue, durable=True)
            for _ in range(3):
                channel.basic_publish("", queue, b"m")
        channel.basic_qos(prefetch_count=1, global_qos=global_qos)
        got = []
        for queue in queues:
            channel.basic_consume(queue, lambda ch, m, p, body: got.append(m.delivery_tag))
        connection.process_data_events(time_limit=1.0)
        still_open = channel.is_open
        for queue in queues:
            channel.queue_delete(queue)
        return len(got), still_open


def test_global_qos_verdict_matches_the_node(rabbit4):
    # Strict mode refuses global QoS, saying 4.3 accepts it but silently makes it per consumer.
    connection = pika.BlockingConnection(rabbit4.params)
    try:
        with pytest.raises(StrictModeError, match="por consumidor"):
            connection.channel().basic_qos(prefetch_count=1, global_qos=True)
    finally:
        connection.close()
    # The node (global_qos denied, as in 4.3): basic.qos-ok, the channel stays open, the limit is per consumer.
    assert _prefetched(rabbit4, global_qos=True) == (2, True)
    assert _prefetched(rabbit4, global_qos=False) == (2, True)


POLICY_CASES = [
    ("ha-all", {"ha-mode": "all"}),
    ("ha-exactly", {"ha-mode": "exactly", "ha-params": 2}),
    ("ha-sync", {"ha-mode": "all", "ha-sync-mode": "automatic"}),
    ("max-length", {"max-length": 10}),
    ("delivery-limit", {"delivery-limit": 5}),
    ("queue-mode-na-politica", {"queue-mode": "lazy"}),
]


def put_policy(target: Target, definition: dict) -> Outcome:
    name = unique("politica")
    path = f"policies/{quote(target.vhost, safe='')}/{name}"
    try:
        target.management.request("PUT", path, json={"pattern": f"^{name}$", "definition": definition,
                                                     "apply-to": "queues"})
    except ManagementError as exc:
        return Outcome(False, exc.status, str(exc))
    target.management.request("DELETE", path, ok=(204, 404))
    return Outcome(True)


@pytest.mark.parametrize("definition", [c[1] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
def test_policy_verdict_matches_the_node(rabbit4, definition):
    try:
        strict.check_policy(definition)
        verdict = None
    except StrictModeError as exc:
        verdict = str(exc)
    outcome = put_policy(rabbit4, definition)
    if verdict is None:
        assert outcome.accepted, outcome
    else:
        assert (outcome.accepted, outcome.code) == (False, 400), outcome
        assert "not recognised policy settings" in outcome.text


def test_queue_master_locator_refused_by_node_and_strict_mode(rabbit4):
    """Found by comparing with the real node: 4.3's defaults deny queue_master_locator, and strict
    mode did not know it; it does now (and points at x-queue-leader-locator)."""
    kwargs = {"queue": "x", "durable": True, "arguments": {"x-queue-master-locator": "client-local"}}
    outcome = declare(rabbit4, kwargs)
    assert (outcome.accepted, outcome.code) == (False, 541) and "queue_master_locator" in outcome.text
    assert strict_verdict(kwargs) is not None
    leader = {"queue": "y", "durable": True, "arguments": {"x-queue-leader-locator": "client-local"}}
    assert declare(rabbit4, leader).accepted and strict_verdict(leader) is None


# ---------------------------------------------------------------------------------------------
# What 4.3's defaults changed (4.0 with its own defaults, and 3.10).

def test_transient_nonexclusive_queue_by_version(rabbit310, rabbit40, rabbit4):
    kwargs = {"queue": "x"}
    assert declare(rabbit310, kwargs).accepted
    assert declare(rabbit40, kwargs).accepted  # 4.0: permitted by default (a warning in the log)
    refused = declare(rabbit4, kwargs)
    assert (refused.accepted, refused.code, refused.closed) == (False, 541, "conexão")
    assert refused.text.startswith("INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated")


def test_global_qos_by_version(rabbit310, rabbit40, rabbit4):
    assert _prefetched(rabbit310, global_qos=True) == (1, True)  # one limit for the channel
    assert _prefetched(rabbit40, global_qos=True) == (1, True)   # 4.0 default: still global
    assert _prefetched(rabbit4, global_qos=True) == (2, True)    # denied (4.3): per consumer


# ---------------------------------------------------------------------------------------------
# Behaviours that differ between 3.10 and 4.x, on both brokers.

@pytest.mark.parametrize("how", ["nack", "reject"])
def test_quorum_queue_delivery_limit(each, how):
    """4.0 gave quorum queues a default delivery limit of 20; 3.10 has none. (4.3.0 stops counting
    basic.nack(requeue=True), a plain return, towards it; basic.reject(requeue=True) still counts:
    rabbit_channel.erl at v4.3.0. Not seen here: no 4.3 node.)"""
    queue = unique("veneno")
    deliveries = 0
    with strict_off(), pika.BlockingConnection(each.params) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.basic_publish("", queue, b"m")
        for _ in range(25):
            method = None
            for _ in range(100):
                method, _props, _body = channel.basic_get(queue)
                if method:
                    break
                time.sleep(0.01)
            if method is None:
                break
            deliveries += 1
            if how == "nack":
                channel.basic_nack(method.delivery_tag, requeue=True)
            else:
                channel.basic_reject(method.delivery_tag, requeue=True)
        channel.queue_delete(queue)
    unlimited = each.label == "3.10" or (how == "nack" and version_tuple(each.version) >= (4, 3))
    assert deliveries == (25 if unlimited else 21), deliveries  # 1 + 20 redeliveries, then dropped


def test_x_death_of_a_republished_message(each):
    """4.x no longer reads the x-death header a client (re)publishes; 3.10 adds to its count."""
    source, dead = unique("origem"), unique("mortas")
    with strict_off(), pika.BlockingConnection(each.params) as connection:
        channel = connection.channel()
        channel.queue_declare(dead, durable=True)
        channel.queue_declare(source, durable=True, arguments={"x-dead-letter-exchange": "",
                                                              "x-dead-letter-routing-key": dead})

        def dead_letter(properties=None):
            channel.basic_publish("", source, b"m", properties=properties)
            method, _p, _b = _get(channel, source)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return _get(channel, dead, auto_ack=True)[1]

        first = dead_letter()
        assert first.headers["x-death"][0]["count"] == 1
        again = dead_letter(first)  # republished with the x-death header it came back with
        for queue in (source, dead):
            channel.queue_delete(queue)
    count = again.headers["x-death"][0]["count"]
    assert count == (2 if each.label == "3.10" else 1), again.headers["x-death"]


def _get(channel, queue, auto_ack=False):
    for _ in range(200):
        method, properties, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method:
            return method, properties, body
        time.sleep(0.01)
    raise AssertionError(f"nada chegou em {queue}")


def test_classic_mirroring_policy(each):
    """4.0 removed classic queue mirroring: ha-* policies are refused (3.10 accepts them)."""
    outcome = put_policy(each, {"ha-mode": "all"})
    assert outcome.accepted == (each.label == "3.10"), outcome


def test_stream_filtering(each):
    """Stream filtering (3.13+): 4.x delivers only the filtered values; 3.10 ignores the filter."""
    queue = unique("fluxo")
    got = []
    with strict_off(), pika.BlockingConnection(each.params) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
        for i, value in enumerate("abab"):
            channel.basic_publish("", queue, f"{value}{i}".encode(),
                                  properties=pika.BasicProperties(headers={"x-stream-filter-value": value}))
        channel.basic_qos(prefetch_count=50)

        def on_message(ch, method, properties, body):
            got.append(body.decode())
            ch.basic_ack(method.delivery_tag)

        tag = channel.basic_consume(queue, on_message, arguments={"x-stream-offset": "first",
                                                                  "x-stream-filter": "a"})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(got) < (4 if each.label == "3.10" else 2):
            connection.process_data_events(time_limit=0.1)
        connection.process_data_events(time_limit=0.3)
        channel.basic_cancel(tag)
        channel.queue_delete(queue)
    assert got == (["a0", "b1", "a2", "b3"] if each.label == "3.10" else ["a0", "a2"]), got


def test_queue_mode_and_version_1_accepted_by_3_10_and_4_0(rabbit310, rabbit40):
    for kwargs in ({"queue": "x", "durable": True, "arguments": {"x-queue-mode": "lazy"}},
                   {"queue": "x", "durable": True, "arguments": {"x-queue-version": 1}}):
        assert declare(rabbit310, kwargs).accepted and declare(rabbit40, kwargs).accepted


# ---------------------------------------------------------------------------------------------
# The learner's side: CURSO_BROKER=4 and `curso broker ... --versao 4`.

def test_curso_broker_4_gives_chapter_vhosts_on_the_4x_node(rabbit4_node, monkeypatch, tmp_path):
    monkeypatch.setenv("CURSO_RABBIT4_ROOTFS", str(r4.rootfs_dir()))  # the cached build, not a new one
    monkeypatch.setenv("CURSO_HOME", str(tmp_path / "curso"))
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    monkeypatch.setattr(b, "RABBIT4_PORTS", rabbit4_node.ports)
    monkeypatch.setattr(b, "_cached", None)
    monkeypatch.setenv("CURSO_BROKER", "4")
    curso = setup("teste-r4")
    try:
        assert curso.broker.port == rabbit4_node.ports.amqp
        assert curso.vhost == f"curso-teste-r4{os.environ.get('CURSO_VHOST_SUFFIX', '')}"
        assert version_tuple(curso.management.version()) >= (4, 0)
        channel = curso.connect().channel()
        with pytest.raises(StrictModeError):  # strict mode stays on
            channel.queue_declare("ola")
        assert channel.queue_declare("ola", durable=True).method.queue == "ola"
    finally:
        curso.cleanup(delete_vhost=True)
    monkeypatch.delenv("CURSO_BROKER")
    assert b.ensure_broker(refresh=True).port == b.COURSE_PORTS.amqp  # the default is untouched


def test_bad_version_is_refused_at_once(monkeypatch):
    monkeypatch.setenv("CURSO_BROKER", "5")
    with pytest.raises(BrokerNotFound, match="CURSO_BROKER"):
        b.ensure_broker(refresh=True)
    assert b.wanted_version("padrao") == "" and b.wanted_version("4") == "4"


@pytest.fixture
def course4_elsewhere(monkeypatch, tmp_path):
    """`curso broker ... --versao 4` in an empty data folder, on free ports (not the learner's 5682)."""
    monkeypatch.setenv("CURSO_RABBIT4_ROOTFS", str(r4.rootfs_dir()))  # the cached build, not a new one
    monkeypatch.setenv("CURSO_HOME", str(tmp_path / "curso"))
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    monkeypatch.delenv("CURSO_BROKER", raising=False)
    monkeypatch.setattr(b, "RABBIT4_PORTS", Ports.offset(free_offset(start=9000)))
    monkeypatch.setattr(b, "_cached", None)
    yield b.RABBIT4_PORTS
    node = b.course_node4()
    b.stop_broker(versao="4")
    node.kill()  # in case the test failed half-way


def test_cli_up_status_down_versao_4(course4_elsewhere, capsys, monkeypatch):
    if not IS_ROOT:
        pytest.skip("o nó 4.x precisa de root")
    assert cli.main(["broker", "up", "--versao", "4"]) == 0
    out = capsys.readouterr().out
    assert f":{course4_elsewhere.amqp}/" in out and "rabbit4" in out and "CURSO_BROKER=4" in out
    assert "iniciado agora" in out
    assert cli.main(["broker", "up", "--versao", "4"]) == 0  # again: it was already up
    assert "já estava no ar" in capsys.readouterr().out
    monkeypatch.setenv("CURSO_BROKER", "4")  # the env var alone selects it too
    assert cli.main(["broker", "status"]) == 0
    status = capsys.readouterr().out
    assert "rabbit4" in status and "versão:         4." in status
    assert cli.main(["broker", "status", "--versao", "padrao"]) == 0  # the 3.10 broker, untouched
    assert "3.10" in capsys.readouterr().out
    assert cli.main(["broker", "down", "--versao", "4"]) == 0
    assert "parado" in capsys.readouterr().out
    assert amqp_answers("127.0.0.1", course4_elsewhere.amqp) is None


def test_without_root_a_portuguese_error_says_what_to_use(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    node = Rabbit4Node(tmp_path / "node", name="semroot", ports=Ports.offset(free_offset()))
    started = time.monotonic()
    with pytest.raises(Rabbit4Unavailable) as err:
        node.start()
    assert time.monotonic() - started < 2
    message = str(err.value)
    assert "root" in message and "rabbitmq:4-management" in message and "brew install rabbitmq" in message
    assert not (tmp_path / "node").exists()


# ---------------------------------------------------------------------------------------------
# The root filesystem cache (a tiny fake build: the real one is ~300 MB).

def fake_build(calls: list, delay: float = 0.0, fail: bool = False):
    def build(folder: Path) -> None:
        calls.append(folder)
        time.sleep(delay)
        (folder / "usr/lib/rabbitmq/bin").mkdir(parents=True)
        if fail:
            raise BrokerStartError("falhou no meio")
        (folder / r4.SERVER).write_text("#!/bin/sh\n")
    return build


def test_rootfs_is_built_once_then_cached(tmp_path):
    root, calls = tmp_path / "rootfs", []
    assert ensure_rootfs(root, build=fake_build(calls)) == root
    assert rootfs_ok(root) and len(calls) == 1
    assert calls[0] != root and calls[0].parent == root.parent  # built beside it, then renamed
    ensure_rootfs(root, build=fake_build(calls))
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rootfs", "rootfs.lock"]


def test_broken_cache_is_rebuilt(tmp_path):
    root, calls = tmp_path / "rootfs", []
    ensure_rootfs(root, build=fake_build(calls))
    (root / r4.SERVER).unlink()  # stamp present, server missing
    assert not rootfs_ok(root)
    ensure_rootfs(root, build=fake_build(calls))
    assert len(calls) == 2 and rootfs_ok(root)
    (root / r4.STAMP).unlink()  # a tree without the stamp is not trusted either
    ensure_rootfs(root, build=fake_build(calls))
    assert len(calls) == 3 and rootfs_ok(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rootfs", "rootfs.lock"]


def test_failed_or_killed_build_leaves_nothing_that_looks_good(tmp_path):
    root, calls = tmp_path / "rootfs", []
    with pytest.raises(BrokerStartError, match="falhou"):
        ensure_rootfs(root, build=fake_build(calls, fail=True))
    assert not root.exists() and not list(tmp_path.glob("rootfs.tmp-*"))
    killed = tmp_path / "rootfs.tmp-999999"  # what a SIGKILLed build leaves
    (killed / "usr/lib/rabbitmq/bin").mkdir(parents=True)
    ensure_rootfs(root, build=fake_build(calls))
    assert rootfs_ok(root) and not killed.exists()


def test_two_builders_build_once(tmp_path):
    root, calls, errors = tmp_path / "rootfs", [], []

    def run():
        try:
            ensure_rootfs(root, build=fake_build(calls, delay=0.5))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(calls) == 1 and rootfs_ok(root)


def test_mirror_comes_from_the_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("CURSO_DEBIAN_MIRROR", raising=False)
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "a-outro.sources").write_text(
        "Types: deb\nURIs: https://pacotes.invalid/node\nSuites: nodistro\nComponents: main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://copia.invalid/archive/debian/20250520T000000Z\nURIs: http://espelho.invalid/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://espelho.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n")
    assert r4.apt_mirror(etc) == "http://espelho.invalid/debian"
    (etc / "sources.list.d" / "debian.sources").unlink()
    (etc / "sources.list").write_text("deb http://seguranca.invalid/debian-security bookworm-security main\n"
                                      "deb [arch=amd64 signed-by=/k.gpg] http://linha.invalid/debian bookworm main\n")
    assert r4.apt_mirror(etc) == "http://linha.invalid/debian"
    monkeypatch.setenv("CURSO_DEBIAN_MIRROR", "http://meu.invalid/debian/")
    assert r4.apt_mirror(etc) == "http://meu.invalid/debian"
    monkeypatch.delenv("CURSO_DEBIAN_MIRROR")
    (etc / "sources.list").unlink()
    with pytest.raises(Rabbit4Unavailable, match="CURSO_DEBIAN_MIRROR"):
        r4.apt_mirror(etc)


# ---------------------------------------------------------------------------------------------
# Mounts: never on the host, gone with the node, and stale ones cleared.

@pytest.mark.skipif(not IS_ROOT, reason="montar precisa de root")
def test_stale_mounts_are_unmounted_and_never_deleted_through(tmp_path):
    tree = tmp_path / "arvore"
    (tree / "dev").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "curso-teste", str(tree / "dev")], check=True, timeout=30)
    try:
        (tree / "dev" / "nao-apague").write_text("x")
        assert mounts_under(tree) == [str(tree / "dev")]
        r4.remove_tree(tree)  # unmounts first, so the mounted tree's content is never touched
        assert not tree.exists() and mounts_under(tmp_path) == []
    finally:
        subprocess.run(["umount", "-l", str(tree / "dev")], capture_output=True, timeout=30)
    assert unmount_under(tmp_path) == []


_CHILD = """
import json, sys, time
from course_utils.native import Ports
from course_utils.rabbit4 import Rabbit4Node
base, name, ports = sys.argv[1], sys.argv[2], Ports(**json.loads(sys.argv[3]))
node = Rabbit4Node(base, name=name, ports=ports, die_with_parent=True)
node.start(timeout=90)
print(node.pid(), flush=True)
time.sleep(600)
"""


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
        raise AssertionError(f"o processo filho não respondeu em {timeout:.0f} s")
    return proc.stdout.readline().strip()


@pytest.mark.skipif(not IS_ROOT, reason="o nó 4.x precisa de root")
def test_mounts_live_only_in_the_node_and_die_with_it(tmp_path, rabbit4_node):
    rootfs = rabbit4_node.rootfs
    base, name = tmp_path / "node", f"teste4vida-{WORKER}-{os.getpid()}"
    ports = Ports.offset(free_offset())
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(base), name, json.dumps(ports.__dict__)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    node = Rabbit4Node(base, name=name, ports=ports, die_with_parent=True)
    try:
        beam = int(_read_line(child, 120))
        # The node sees /proc, /dev and its folder mounted (paths relative to its chroot) ...
        inside = {line.split()[4] for line in Path(f"/proc/{beam}/mountinfo").read_text().splitlines()}
        assert {"/proc", "/dev", f"/var/lib/curso/{name}"} <= inside
        assert os.path.realpath(f"/proc/{beam}/root") == str(rootfs.resolve())
        # ... and the host sees nothing mounted under the root filesystem.
        assert mounts_under(rootfs) == []
        # Its parent killed: the node goes too (die_with_parent), and its namespace with it.
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 30
        while pid_alive(beam) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(beam), "o nó sobreviveu ao processo que o iniciou"
        assert amqp_answers("127.0.0.1", ports.amqp) is None and mounts_under(rootfs) == []
        # The next run does not trip on what the killed one left (pid file, mount point).
        node.start(timeout=90)
        assert node.is_running() and node.pid() != beam
        new_beam = node.pid()
        assert node.stop() is True
        assert not pid_alive(new_beam) and mounts_under(rootfs) == []
        assert not (rootfs / "var/lib/curso" / name).exists()
        assert f"/var/lib/curso/{name}" not in Path("/proc/self/mountinfo").read_text()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        node.kill()


@pytest.mark.parametrize("deny, error, boots", [
    (True, "Error during startup: {error, {failed_to_deny_deprecated_features, [transient_nonexcl_queues]}}", 2),
    (False, "Error during startup: {error, {failed_to_deny_deprecated_features, [transient_nonexcl_queues]}}", 1),
    (True, "Error during startup: {error, eaddrinuse}", 1),
])
def test_only_4_0_5s_deprecated_feature_race_boots_again(monkeypatch, tmp_path, deny, error, boots):
    calls = []

    def fake_start(self, timeout=60.0):
        calls.append(timeout)
        if len(calls) == 1:
            raise BrokerStartError(f"O nó RabbitMQ x não subiu.\n{error}")

    monkeypatch.setattr(r4, "require_root", lambda: None)
    monkeypatch.setattr(r4, "ensure_rootfs", lambda root: None)
    monkeypatch.setattr(r4, "unmount_under", lambda path: [])
    monkeypatch.setattr(r4.NativeNode, "start", fake_start)
    node = r4.Rabbit4Node(tmp_path / "no", name="corrida", rootfs=tmp_path / "rootfs", deny_like_4_3=deny)
    monkeypatch.setattr(node, "_ensure_epmd", lambda: None)
    monkeypatch.setattr(node, "is_running", lambda: False)
    if boots == 2:
        node.start(timeout=5)
        assert node.boot_retries == 1
    else:
        with pytest.raises(BrokerStartError):
            node.start(timeout=5)
        assert node.boot_retries == 0
    assert len(calls) == boots
