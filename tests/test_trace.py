"""The firehose trace of a known exchange shows the expected publishes and deliveries."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.broker import Broker  # noqa: E402
from course_utils.sandbox import Chapter  # noqa: E402
from course_utils.trace import COLUMNS, plot_trace, trace  # noqa: E402
from figure_geometry import assert_readable  # noqa: E402


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


def test_deliveries_name_the_connections_opened_just_before(curso, tmp_path):
    """As in docs/toolkit_demo.ipynb: two workers named by client_properties, connected right
    before the trace (the management API lists a connection only at its next statistics refresh)."""
    publisher = curso.connect()
    pch = publisher.channel()
    pch.confirm_delivery()
    workers = {name: curso.connect(client_properties={"connection_name": name}) for name in ("worker-1", "worker-2")}
    channels = {name: connection.channel() for name, connection in workers.items()}
    with trace(curso) as t:
        for i in range(4):
            pch.basic_publish(exchange="", routing_key="tarefas", body=f"tarefa {i}".encode())
        for _ in range(2):
            for ch in channels.values():
                method, _, body = ch.basic_get(queue="tarefas")
                if body == b"tarefa 3":
                    ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
                else:
                    ch.basic_ack(delivery_tag=method.delivery_tag)
        _get(channels["worker-1"], "mortas")
    table = t.table()
    delivered = table[table["evento"] != "publicada"]
    assert len(delivered) == 5
    assert set(delivered["consumidor"]) == {"worker-1 (canal 1)", "worker-2 (canal 1)"}
    fig = plot_trace(table)
    fig.savefig(tmp_path / "trace.png", dpi=fig.dpi, bbox_inches="tight")
    drawn = [text.text for text in assert_readable(fig)]
    assert drawn.count("worker-1") == 3 and drawn.count("worker-2") == 2
    assert_readable(plot_trace(table, x="tempo"))
    for connection in (publisher, *workers.values()):
        connection.close()


def _synthetic_table(deliveries: int, who: str) -> pd.DataFrame:
    rows = [{"t_ms": 0.1 * i, "evento": "publicada", "mensagem": f"#{i + 1}", "exchange": "(padrão)",
             "routing_key": "tarefas", "fila": "", "roteada_para": "tarefas", "consumidor": "",
             "corpo": f"tarefa {i}", "motivo_dlx": ""} for i in range(deliveries)]
    rows += [{"t_ms": 10 + 0.1 * i, "evento": "entregue", "mensagem": f"#{i + 1}", "exchange": "(padrão)",
              "routing_key": "tarefas", "fila": "tarefas", "roteada_para": "",
              "consumidor": f"{who}{i % 3} (canal 1)", "corpo": f"tarefa {i}", "motivo_dlx": ""}
             for i in range(deliveries)]
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.mark.parametrize("deliveries,who", [(4, "conexão :6085"), (12, "um-nome-de-conexão-bem-longo-"),
                                            (30, "conexão :6085")])
def test_timeline_labels_never_overlap(deliveries, who, tmp_path):
    """Long connection names, many deliveries: labels stack instead of running together."""
    table = _synthetic_table(deliveries, who)
    for x in ("ordem", "tempo"):
        fig = plot_trace(table, x=x)
        fig.savefig(tmp_path / f"trace-{deliveries}-{x}.png", dpi=fig.dpi, bbox_inches="tight")
        texts = assert_readable(fig)
        names = {f"{who}{k}" for k in range(3)}
        assert all(any(name in text.text for text in texts) for name in names)  # on a label or in the key
        if x == "ordem":  # every delivery is labelled: with the name, or with its key letter
            labels = [t.text for t in texts if t.text in names or (t.text.isalpha() and t.text.isupper())]
            assert len(labels) == deliveries


def test_a_connection_opened_right_before_the_trace_is_named(curso):
    """The firehose names a connection only by its address; the name the client gave it comes from
    the management API, which lists a new connection only at its next statistics refresh."""
    assert _consumer_named_by_trace(curso) == ["worker-1 (canal 1)"]


def _consumer_named_by_trace(curso) -> list[str]:
    """Open 'worker-1' just before a trace, get one message in it: the trace's consumer column."""
    connection = curso.connect(client_properties={"connection_name": "worker-1"})
    try:
        ch = connection.channel()
        ch.basic_publish(exchange="", routing_key="tarefas", body=b"tarefa")
        with trace(curso) as t:
            _get(ch, "tarefas")
        return t.table()["consumidor"].tolist()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def default_stats_broker(default_stats_node):
    yield Broker("external", "127.0.0.1", default_stats_node.ports.amqp, "guest", "guest",
                 f"http://127.0.0.1:{default_stats_node.ports.management}")


@pytest.mark.slow
def test_connection_names_on_a_broker_with_default_statistics(default_stats_broker):
    curso = Chapter("rastreio5s", default_stats_broker, "/", owns_vhost=False)
    with curso.connect() as setup_connection:
        setup_connection.channel().queue_declare(queue="tarefas", durable=True)
    assert _consumer_named_by_trace(curso) == ["worker-1 (canal 1)"]
