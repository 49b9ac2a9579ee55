"""Strict mode: what RabbitMQ 4.x refuses is refused here too, before it reaches the 3.10 broker."""
import pytest

from course_utils import setup, strict
from course_utils.errors import StrictModeError


@pytest.fixture
def channel(course_broker):
    curso = setup("teste-strict")
    connection = curso.connect()
    yield connection.channel()
    curso.cleanup(delete_vhost=True)


@pytest.mark.parametrize("kwargs", [
    {"queue": "x"},
    {"queue": ""},
    {"queue": "x", "auto_delete": True},
    {"queue": "x", "durable": True, "arguments": {"x-queue-mode": "lazy"}},
    {"queue": "x", "durable": True, "arguments": {"x-queue-version": 1}},
])
def test_rejects_what_4x_refuses(channel, kwargs):
    with pytest.raises(StrictModeError, match="4"):
        channel.queue_declare(**kwargs)
    assert channel.is_open  # nothing was sent; the channel is still usable
    assert channel.connection.is_open


def test_rejects_global_qos(channel):
    with pytest.raises(StrictModeError, match="global"):
        channel.basic_qos(prefetch_count=10, global_qos=True)
    channel.basic_qos(prefetch_count=10)


def test_accepts_durable_quorum_and_exclusive(channel):
    assert channel.queue_declare(queue="duravel", durable=True).method.queue == "duravel"
    channel.queue_declare(queue="quorum", durable=True, arguments={"x-queue-type": "quorum"})
    name = channel.queue_declare(queue="", exclusive=True).method.queue
    assert name.startswith("amq.gen-")
    channel.queue_declare(queue="duravel", passive=True)


def test_message_is_portuguese_and_actionable(channel):
    with pytest.raises(StrictModeError) as err:
        channel.queue_declare(queue="ola_mundo")
    assert "durable=True" in str(err.value) and "541" in str(err.value)


def test_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("CURSO_STRICT", "0")
    assert not strict.wanted()
    monkeypatch.setenv("CURSO_STRICT", "1")
    assert strict.wanted()
    strict.disable()
    assert not strict.is_enabled()
    strict.enable()
    assert strict.is_enabled()
