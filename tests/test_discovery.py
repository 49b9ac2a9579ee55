"""Broker discovery order and its failure messages. Docker's absence or presence is simulated; the
brokers themselves are real."""
from __future__ import annotations

import socket
import time

import pytest

from course_utils import broker as b
from course_utils.errors import BrokerAuthError, BrokerNotFound
from course_utils.native import Ports, amqp_answers, free_offset


@pytest.fixture
def elsewhere(monkeypatch, tmp_path):
    """Point discovery at free ports and an empty data dir, as on a machine with no broker."""
    monkeypatch.setattr(b, "COURSE_PORTS", Ports.offset(free_offset(start=7000)))
    monkeypatch.setenv("CURSO_HOME", str(tmp_path / "curso"))
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    monkeypatch.setattr(b, "_cached", None)
    yield b.COURSE_PORTS
    b.stop_broker()


def test_rabbitmq_url_wrong_password_says_so(course_broker, monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:errada@localhost:5672/")
    started = time.monotonic()
    with pytest.raises(BrokerAuthError, match="senha"):
        b.ensure_broker(refresh=True)
    assert time.monotonic() - started < 10


def test_rabbitmq_url_wrong_vhost_says_so(course_broker, monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/nao-existe")
    started = time.monotonic()
    with pytest.raises(BrokerAuthError, match="vhost 'nao-existe'"):
        b.ensure_broker(refresh=True)
    assert time.monotonic() - started < 10


def test_rabbitmq_url_comes_first(course_broker, monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/%2F")
    monkeypatch.setattr(b, "_docker_available", lambda: pytest.fail("RABBITMQ_URL must not look further"))
    found = b.ensure_broker(refresh=True)
    assert (found.kind, found.vhost, found.management_url) == ("external", "/", "http://localhost:15672")


def test_answering_broker_is_used_not_started(course_broker, monkeypatch):
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    monkeypatch.setattr(b, "_docker_available", lambda: pytest.fail("an answering broker must be used"))
    found = b.ensure_broker(refresh=True)
    assert found.port == 5672 and found.kind in ("native", "external")


def test_docker_comes_before_native(elsewhere, monkeypatch):
    calls = []
    monkeypatch.setattr(b, "_docker_available", lambda: True)
    monkeypatch.setattr(b, "_start_docker", lambda timeout: calls.append("docker") or "docker-broker")
    monkeypatch.setattr(b, "find_server", lambda: pytest.fail("native must come after Docker"))
    assert b.ensure_broker() == "docker-broker" and calls == ["docker"]


def test_without_docker_a_native_node_starts_and_down_stops_it(elsewhere, monkeypatch):
    monkeypatch.setattr(b, "_docker_available", lambda: False)
    found = b.ensure_broker(timeout=60)
    assert (found.kind, found.started_here, found.port) == ("native", True, elsewhere.amqp)
    assert found.started_now
    again = b.ensure_broker(timeout=60)  # answering now: started by the course, but not by this call
    assert again.started_here and not again.started_now
    assert b.broker_status()["versao"]
    assert "parado" in b.stop_broker()
    assert amqp_answers("localhost", elsewhere.amqp) is None


def test_nothing_installed_gives_install_command(elsewhere, monkeypatch):
    monkeypatch.setattr(b, "_docker_available", lambda: False)
    monkeypatch.setattr(b, "find_server", lambda: None)
    started = time.monotonic()
    with pytest.raises(BrokerNotFound) as err:
        b.ensure_broker()
    assert time.monotonic() - started < 10
    assert "apt-get install -y rabbitmq-server" in str(err.value)
    assert "rabbitmq:4-management" in str(err.value)


def test_port_held_by_something_else(elsewhere, monkeypatch):
    monkeypatch.setattr(b, "_docker_available", lambda: pytest.fail("must stop at the squatter"))
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", elsewhere.amqp))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(BrokerNotFound) as err:
            b.ensure_broker()
        assert time.monotonic() - started < 10
    assert str(elsewhere.amqp) in str(err.value) and "python" in str(err.value).lower()


def test_down_leaves_a_broker_it_did_not_start(course_broker, monkeypatch, tmp_path):
    monkeypatch.setenv("CURSO_HOME", str(tmp_path / "outro"))
    assert "Nada a parar" in b.stop_broker()
    assert amqp_answers("localhost", 5672)
