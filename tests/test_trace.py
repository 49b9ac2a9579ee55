"""The firehose trace of a known exchange shows the expected publishes and deliveries."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.trace import plot_trace, trace  # noqa: E402


@pytest.fixture
def curso(course_broker):
    curso = setup("teste-rastreio")
    with curso.connect() as connection:
        ch = connection.channel()
        ch.exchange_declare(exchange="logs", exchange_type="fanout", durable=True)
        ch.exchange_declare(exchange="dlx", exchange_type="fanout", durable=True)
        ch.queue_declare(queue="tela", durable=True)
        ch.queue_declare(queue="arquivo", durable=True)
        ch.queue_declare(queue="mortas", durable=True)
        ch.queue_declare(queue="tarefas", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
        ch.queue_bind(queue="tela", exchange="logs")
        ch.queue_bind(queue="arquivo", exchange="logs")
        ch.queue_bind(queue="mortas", exchange="dlx")
    yield curso
    curso.cleanup(delete_vhost=True)


def _get(channel, queue, ack=True):
    for _ in range(50):  # a dead-lettered message takes a moment to reach its queue
        method, _, body = channel.basic_get(queue=queue, auto_ack=False)
        if method is not None:
            if ack:
                channel.basic_ack(delivery_tag=method.delivery_tag)
            return method, body
        channel.connection.sleep(0.02)
    raise AssertionError(f"nada chegou em {queue}")


def test_fanout_publishes_and_deliveries(curso):
    producer = curso.connect(client_properties={"connection_name": "produtor"})
    consumer = curso.connect(client_properties={"connection_name": "leitor"})
    pch, cch = producer.channel(), consumer.channel()
    with trace(curso) as t:
        pch.basic_publish(exchange="logs", routing_key="", body=b"primeira")
        pch.basic_publish(exchange="logs", routing_key="", body=b"segunda")
        _get(cch, "tela")
        _get(cch, "arquivo")
    table = t.table()
    published = table[table["evento"] == "publicada"]
    assert published["corpo"].tolist() == ["primeira", "segunda"]
    assert published["mensagem"].tolist() == ["#1", "#2"]
    assert set(published["roteada_para"]) == {"arquivo, tela"}
    delivered = table[table["evento"] == "entregue"]
    assert sorted(zip(delivered["fila"], delivered["mensagem"], delivered["corpo"])) == [
        ("arquivo", "#1", "primeira"), ("tela", "#1", "primeira")]
    assert delivered["consumidor"].str.endswith("(canal 1)").all()
    producer.close()
    consumer.close()


def test_redelivery_dead_letter_and_acks(curso):
    connection = curso.connect()
    ch = connection.channel()
    with trace(curso) as t:
        ch.basic_publish(exchange="", routing_key="tarefas", body=b"volta")
        ch.basic_publish(exchange="", routing_key="tarefas", body=b"morre")
        ch.basic_publish(exchange="", routing_key="nenhuma_fila", body=b"perdida")
        method, _ = _get(ch, "tarefas", ack=False)
        ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)    # "volta" comes back
        _get(ch, "tarefas")                                              # "volta" again: ack
        method, _ = _get(ch, "tarefas", ack=False)
        ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False)  # "morre" -> dlx
        _get(ch, "mortas")
    rows = t.table()[["evento", "mensagem", "fila", "corpo", "roteada_para", "motivo_dlx"]].values.tolist()
    assert rows == [
        ["publicada", "#1", "", "volta", "tarefas", ""],
        ["publicada", "#2", "", "morre", "tarefas", ""],
        ["publicada", "#3", "", "perdida", "(nenhuma)", ""],
        ["entregue", "#1", "tarefas", "volta", "", ""],
        ["reentregue", "#1", "tarefas", "volta", "", ""],
        ["entregue", "#2", "tarefas", "morre", "", ""],
        ["entregue (dead-letter)", "#2", "mortas", "morre", "", "rejected em tarefas"],
    ]
    acks = t.acks().set_index("fila")
    assert acks.loc["tarefas", "entregas"] == 3 and acks.loc["tarefas", "acks"] == 1
    assert acks.loc["mortas", "acks"] == 1
    connection.close()


def test_firehose_is_switched_off_and_vhost_kept(curso):
    before = curso.management.get(f"vhosts/{curso.vhost}")
    with trace(curso):
        assert curso.management.get(f"vhosts/{curso.vhost}")["tracing"] is True
        with trace(curso):  # nested traces share the switch
            pass
        assert curso.management.get(f"vhosts/{curso.vhost}")["tracing"] is True
    after = curso.management.get(f"vhosts/{curso.vhost}")
    assert after["tracing"] is False
    assert (after["description"], after["tags"]) == (before["description"], before["tags"])
    assert sorted(q["name"] for q in curso.management.queues()) == ["arquivo", "mortas", "tarefas", "tela"]


def test_timeline_renders_to_png(curso, tmp_path):
    with curso.connect() as connection:
        ch = connection.channel()
        with trace(curso) as t:
            ch.basic_publish(exchange="logs", routing_key="", body=b"oi")
            _get(ch, "tela")
    for x in ("ordem", "tempo"):
        path = tmp_path / f"trace-{x}.png"
        plot_trace(t.table(), x=x).savefig(path)
        assert path.read_bytes()[:4] == b"\x89PNG"
    with trace(curso) as empty:
        pass
    assert empty.table().empty
    plot_trace(empty.table()).savefig(tmp_path / "vazio.png")


def test_cell_errors_pass_through_and_switch_the_firehose_off(curso):
    with pytest.raises(ValueError, match="da célula"):
        with trace(curso):
            raise ValueError("erro da célula")
    assert curso.management.get(f"vhosts/{curso.vhost}")["tracing"] is False
