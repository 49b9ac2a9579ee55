"""The chapter sandbox: isolated, fresh on every setup(), and hands-off with RABBITMQ_URL."""
import os
import time

import pytest

from course_utils import setup
from course_utils.errors import CourseError
from course_utils.sandbox import vhost_for


def _declare(curso, name, messages=0):
    with curso.connect() as connection:
        channel = connection.channel()
        channel.queue_declare(queue=name, durable=True)
        for i in range(messages):
            channel.basic_publish(exchange="", routing_key=name, body=f"m{i}")


def test_two_sandboxes_do_not_see_each_other(course_broker):
    a, b = setup("teste-a"), setup("teste-b")
    try:
        _declare(a, "so_do_a")
        _declare(b, "so_do_b")
        assert [q["name"] for q in a.management.queues()] == ["so_do_a"]
        assert [q["name"] for q in b.management.queues()] == ["so_do_b"]
        assert a.vhost != b.vhost and a.url != b.url
    finally:
        a.cleanup(delete_vhost=True)
        b.cleanup(delete_vhost=True)


def test_setup_again_gives_an_empty_vhost(course_broker):
    curso = setup("teste-reset")
    _declare(curso, "velha", messages=3)
    assert curso.management.queues()
    again = setup("teste-reset")
    assert again.management.queues() == []
    assert again.management.exchanges()  # the vhost exists again, with its default exchanges
    again.cleanup(delete_vhost=True)


def test_handle_contract(course_broker):
    curso = setup("teste-handle")
    vhost = "curso-teste-handle" + os.environ["CURSO_VHOST_SUFFIX"]  # the test worker's suffix
    assert curso.url.startswith("amqp://") and curso.url.endswith("/" + vhost)
    assert curso.params().virtual_host == vhost
    connection = curso.connect()
    assert connection.is_open
    curso.cleanup()
    assert not connection.is_open
    assert curso.management.whoami()["name"] == "guest"
    assert list(curso.queues().columns)[:2] == ["fila", "tipo"]
    curso.cleanup(delete_vhost=True)


def test_vhost_suffix_keeps_workers_apart(course_broker, monkeypatch):
    monkeypatch.setenv("CURSO_VHOST_SUFFIX", "-tgw7")
    assert vhost_for("cap02") == "curso-cap02-tgw7"
    monkeypatch.setenv("CURSO_VHOST_SUFFIX", "")
    assert vhost_for("cap02") == "curso-cap02"
    monkeypatch.setenv("CURSO_VHOST_SUFFIX", "/../x")
    with pytest.raises(CourseError, match="CURSO_VHOST_SUFFIX"):
        vhost_for("cap02")


def test_rabbitmq_url_is_used_as_given(course_broker, monkeypatch):
    admin = course_broker.management()
    admin.create_vhost("externo-teste")
    admin.set_permissions("guest", "externo-teste")
    try:
        monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/externo-teste")
        def mine() -> set[str]:
            """The vhosts this test could have made: other test workers make theirs meanwhile."""
            suffix = os.environ["CURSO_VHOST_SUFFIX"]
            return {v["name"] for v in admin.vhosts() if not v["name"].startswith("curso-") or v["name"].endswith(suffix)}

        before = mine()
        curso = setup("cap99")
        assert curso.vhost == "externo-teste" and not curso.owns_vhost
        _declare(curso, "fica")
        curso.cleanup()
        setup("cap99")  # a second setup creates and deletes nothing
        assert mine() == before
        assert [q["name"] for q in admin.queues("externo-teste")] == ["fica"]
        with pytest.raises(CourseError):
            curso.reset()
    finally:
        admin.delete_vhost("externo-teste")


def test_bad_chapter_name(course_broker):
    with pytest.raises(CourseError, match="inválido"):
        setup("Capítulo 2!")


def _dropped_by_broker(curso, *connections, timeout=20.0):
    """Wait until the broker has dropped every connection of the vhost (missed heartbeats): the
    management API no longer lists any, while each client still believes it is open."""
    deadline = time.monotonic() + timeout
    listed = lambda: len(curso.management.connections())  # noqa: E731 - lags one statistics interval
    while not listed() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert listed(), "the management API should list the new connections"
    while listed() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not listed(), "the broker should have dropped the silent connections"
    assert all(c.is_open for c in connections), "pika only notices a drop on its next call"


def test_cleanup_never_fails_on_connections_the_broker_dropped(course_broker):
    """A learner reads for a while before the last cell: the broker has dropped the connections
    (missed heartbeats) and `close()` would raise StreamLostError. cleanup closes the notebook's own
    connections (passed in) and connect()'s without raising, and still deletes the vhost."""
    import pika

    curso = setup("teste-queda")
    own = pika.BlockingConnection(curso.params(heartbeat=1))  # as the notebooks open theirs
    tracked = curso.connect(heartbeat=1)
    bare = pika.BlockingConnection(curso.params(heartbeat=1))
    _dropped_by_broker(curso, own, tracked, bare)
    with pytest.raises(pika.exceptions.AMQPError):  # what a bare close() does at the end of a notebook
        bare.close()
    curso.cleanup(own, None, delete_vhost=True)  # never raises; None: a connection never opened
    assert not own.is_open and not tracked.is_open
    assert not course_broker.management().vhost_exists(curso.vhost)


def test_cleanup_closes_the_connections_it_is_given(course_broker):
    import pika

    curso = setup("teste-fecha")
    own = pika.BlockingConnection(curso.params())
    curso.cleanup(own)
    assert not own.is_open
    curso.cleanup(own, delete_vhost=True)  # closing twice is fine too


def test_course_connections_outlive_a_learners_pause(course_broker):
    """The broker's own record of a notebook connection: the long heartbeat the course asks for
    (the broker's 60 s would drop a notebook's connection after about three minutes of reading)."""
    from course_utils.sandbox import NOTEBOOK_HEARTBEAT

    curso = setup("heartbeat")
    connection = curso.connect()
    try:
        record = _listed_connection(curso)
        assert record["timeout"] == NOTEBOOK_HEARTBEAT >= 600
        assert connection._impl.params.heartbeat == NOTEBOOK_HEARTBEAT
    finally:
        curso.cleanup(connection, delete_vhost=True)


def _listed_connection(curso, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = curso.management.connections()
        if records:
            return records[0]
        time.sleep(0.2)
    raise AssertionError("the broker never listed the connection")


def test_recreate_vhost_retries_when_the_old_vhosts_storage_is_still_being_removed(monkeypatch):
    """RabbitMQ 3.10 removes a deleted vhost's message store after DELETE has answered; a vhost of
    the same name created at once can collide with it (500 failed_to_start_vhost_on_nodes, seen in a
    fresh-clone run of the suite). recreate_vhost deletes the broken vhost and creates it again; any
    other refusal is raised at once, and so is the last 500."""
    import course_utils.management as mgmt

    monkeypatch.setattr(mgmt.time, "sleep", lambda seconds: None)
    answers, calls = [], []

    def request(method, path, json=None, ok=()):
        calls.append(method)
        if method == "PUT":
            status = answers.pop(0)
            if status:
                raise mgmt.ManagementError(f"respondeu {status}", status)

    admin = mgmt.Management("http://127.0.0.1:1", "guest", "guest")
    monkeypatch.setattr(admin, "request", request)

    answers[:] = [500, None]
    admin.recreate_vhost("curso-x")
    assert calls == ["DELETE", "PUT", "DELETE", "PUT"]

    calls.clear()
    answers[:] = [403]
    with pytest.raises(mgmt.ManagementError):
        admin.recreate_vhost("curso-x")
    assert calls == ["DELETE", "PUT"]

    calls.clear()
    answers[:] = [500, 500, 500, 500]
    with pytest.raises(mgmt.ManagementError):
        admin.recreate_vhost("curso-x")
    assert calls == ["DELETE", "PUT"] * 4
