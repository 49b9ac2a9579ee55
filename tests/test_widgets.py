"""Routing playground: the parsing, the non-interactive logic on the real broker, and the widget."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.errors import CourseError  # noqa: E402
from course_utils.widgets import (parse_bindings, parse_message, play_routing,  # noqa: E402
                                  routing_playground)


@pytest.fixture
def curso(course_broker):
    curso = setup("teste-parquinho")
    yield curso
    curso.cleanup(delete_vhost=True)


def test_parse_bindings():
    assert parse_bindings("erros: error, critical\navisos: warning\n\n", "direct") == {
        "erros": ["error", "critical"], "avisos": ["warning"]}
    assert parse_bindings("tela\narquivo: ignorada", "fanout") == {"tela": [""], "arquivo": [""]}
    assert parse_bindings("a: x-match=any, cor=azul\na: tam=g", "headers") == {
        "a": [{"x-match": "any", "cor": "azul"}, {"x-match": "all", "tam": "g"}]}
    assert parse_message(" kern.info ", "topic") == "kern.info"
    assert parse_message("cor=azul, tam=g", "headers") == {"cor": "azul", "tam": "g"}
    for text, kind in [("", "direct"), (": chave", "topic"), ("a: cor", "headers"),
                       ("a: x-match=talvez", "headers"), ("a: b", "x-consistent")]:
        with pytest.raises(CourseError):
            parse_bindings(text, kind)


def test_play_routing_every_type(curso):
    direct = play_routing(curso, "direct", {"erros": ["error", "critical"], "alertas": ["critical"]}, "critical")
    assert direct.to_dict() == {"erros": True, "alertas": True}
    fanout = play_routing(curso, "fanout", {"tela": [""], "arquivo": [""]}, "qualquer.coisa")
    assert fanout.all()
    topic = play_routing(curso, "topic", {"kern": ["kern.*"], "tudo": ["#"]}, "kern.info.disk")
    assert topic.to_dict() == {"kern": False, "tudo": True}
    headers = play_routing(curso, "headers", {"todos": [{"x-match": "all", "a": "1", "b": "2"}],
                                              "algum": [{"x-match": "any", "a": "1", "b": "2"}]}, {"a": "1"})
    assert headers.to_dict() == {"todos": False, "algum": True}


def test_changed_bindings_replace_old_ones(curso):
    play_routing(curso, "direct", {"q": ["a", "b"]}, "a")
    row = play_routing(curso, "direct", {"q": ["b"]}, "a")
    assert row.to_dict() == {"q": False}
    keys = sorted(b["routing_key"] for b in curso.management.bindings() if b["source"] == "parquinho.direct")
    assert keys == ["b"]


def test_widget_publish_and_clear(curso):
    playground = routing_playground(curso)
    playground.type_picker.value = "topic"
    playground.bindings_box.value = "kern: kern.*\ncriticos: *.critical"
    for key in ("kern.critical", "app.info"):
        playground.message_box.value = key
        playground.publish_button.click()
    assert playground.history.to_dict(orient="index") == {
        "kern.critical": {"kern": True, "criticos": True}, "app.info": {"kern": False, "criticos": False}}
    playground.message_box.value = ""
    playground.type_picker.value = "headers"
    playground.bindings_box.value = "a: cor"  # malformed: an error message, no exception
    assert playground.publish() is None
    assert playground.history.empty
    playground.clear_button.click()
    assert curso.management.queues() == []
    assert not [e for e in curso.management.exchanges() if e["name"].startswith("parquinho")]


LEARNER_QUEUES = {"kern": "kern.*", "criticos": "*.critical", "tudo": "#"}  # chapter 3's own queues


def _learner_topology(curso):
    """Chapter 3's topic example, as a learner has it: queues bound to logs_topico, with messages."""
    with curso.connect() as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange="logs_topico", exchange_type="topic", durable=True)
        for queue, key in LEARNER_QUEUES.items():
            channel.queue_declare(queue=queue, durable=True)
            channel.queue_bind(queue=queue, exchange="logs_topico", routing_key=key)
        channel.confirm_delivery()
        channel.basic_publish(exchange="logs_topico", routing_key="kern.critical", body=b"do aluno")


def _learner_state(curso):
    with curso.connect() as connection:
        channel = connection.channel()
        ready = {q: channel.queue_declare(queue=q, passive=True).method.message_count for q in LEARNER_QUEUES}
    bindings = sorted((b["source"], b["destination"], b["routing_key"]) for b in curso.management.bindings()
                      if b["destination"] in LEARNER_QUEUES and b["source"])
    return ready, bindings


def test_learner_queues_named_like_the_examples_are_never_touched(curso, capsys):
    _learner_topology(curso)
    before = _learner_state(curso)
    assert before == ({"kern": 1, "criticos": 1, "tudo": 1},
                      [("logs_topico", "criticos", "*.critical"), ("logs_topico", "kern", "kern.*"),
                       ("logs_topico", "tudo", "#")])
    playground = routing_playground(curso)
    playground.type_picker.value = "topic"
    playground.bindings_box.value = "\n".join(f"{q}: {k}" for q, k in LEARNER_QUEUES.items())
    playground.message_box.value = "kern.critical"
    row = playground.publish()
    assert row.to_dict() == {"kern": True, "criticos": True, "tudo": True}
    playground.bindings_box.value = ""  # the box's own example (its placeholder)
    assert playground.publish() is not None
    # the learner's queues were neither bound to the playground nor given its test messages
    assert _learner_state(curso) == before
    playground.clear_button.click()
    assert _learner_state(curso) == before
    assert not [q["name"] for q in curso.management.queues() if q["name"].startswith("parquinho")]
    assert not [e["name"] for e in curso.management.exchanges() if e["name"].startswith("parquinho")]
    out = capsys.readouterr().out
    assert "parquinho.topic" in out and "parquinho.kern" in out
    deleted = out[out.rindex("Apagad"):]
    assert all(f"parquinho.{q}" in deleted for q in LEARNER_QUEUES) and "logs_topico" not in deleted


def test_clear_claims_nothing_it_did_not_do(curso, capsys):
    playground = routing_playground(curso)
    playground.clear()  # the last cell of a notebook run with Run All: nobody played
    printed = capsys.readouterr().out.replace("\x1b[2K", "").replace("\r", "")  # clear_output's codes
    assert printed.strip() == ""
    playground.clear_button.click()  # a click gets an answer, which claims no deletion
    printed = capsys.readouterr().out
    assert "Nada a apagar" in printed and "Apagad" not in printed
