"""Topology graph: exactly the nodes and edges of a known set-up, read from the live broker."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.topology import plot_topology, show_topology, topology_graph  # noqa: E402
from course_utils.trace import trace  # noqa: E402


@pytest.fixture
def curso(course_broker):
    curso = setup("teste-topologia")
    with curso.connect() as connection:
        ch = connection.channel()
        ch.exchange_declare(exchange="logs_direto", exchange_type="direct", durable=True)
        ch.exchange_declare(exchange="eventos", exchange_type="topic", durable=True)
        ch.exchange_declare(exchange="auditoria", exchange_type="fanout", durable=True)
        ch.exchange_declare(exchange="cabecalhos", exchange_type="headers", durable=True)
        for queue in ("erros", "alertas", "pedidos_br", "auditoria_log", "azul_g", "solta"):
            ch.queue_declare(queue=queue, durable=True)
        ch.queue_bind(queue="erros", exchange="logs_direto", routing_key="error")
        ch.queue_bind(queue="erros", exchange="logs_direto", routing_key="critical")
        ch.queue_bind(queue="alertas", exchange="logs_direto", routing_key="critical")
        ch.queue_bind(queue="pedidos_br", exchange="eventos", routing_key="pedido.*.br")
        ch.exchange_bind(destination="auditoria", source="eventos", routing_key="pedido.#")
        ch.queue_bind(queue="auditoria_log", exchange="auditoria")
        ch.queue_bind(queue="azul_g", exchange="cabecalhos",
                      arguments={"x-match": "all", "cor": "azul", "tam": "g"})
        for i in range(3):
            ch.basic_publish(exchange="logs_direto", routing_key="critical", body=f"m{i}".encode())
    yield curso
    curso.cleanup(delete_vhost=True)


EXCHANGES = {("exchange", n) for n in ("logs_direto", "eventos", "auditoria", "cabecalhos")}
QUEUES = {("queue", n) for n in ("erros", "alertas", "pedidos_br", "auditoria_log", "azul_g", "solta")}
BINDING_EDGES = {
    (("exchange", "logs_direto"), ("queue", "erros")): "critical\nerror",
    (("exchange", "logs_direto"), ("queue", "alertas")): "critical",
    (("exchange", "eventos"), ("queue", "pedidos_br")): "pedido.*.br",
    (("exchange", "eventos"), ("exchange", "auditoria")): "pedido.#",
    (("exchange", "auditoria"), ("queue", "auditoria_log")): "",
    (("exchange", "cabecalhos"), ("queue", "azul_g")): "all: cor=azul, tam=g",
}


def _labels(graph):
    return {(u, v): d["label"] for u, v, d in graph.edges(data=True)}


def test_graph_has_exactly_the_expected_nodes_and_edges(curso):
    graph = topology_graph(curso, producers=False)
    assert set(graph.nodes) == EXCHANGES | QUEUES  # default, amq.* and internal ones hidden
    labels = _labels(graph)
    assert {k: "\n".join(sorted(v.split("\n"))) for k, v in labels.items()} == BINDING_EDGES
    assert graph.nodes["exchange", "eventos"]["type"] == "topic"
    assert graph.edges[("exchange", "cabecalhos"), ("queue", "azul_g")]["arguments"] == [
        {"x-match": "all", "cor": "azul", "tam": "g"}]


def test_queue_counts_are_exact(curso):
    graph = topology_graph(curso, producers=False)
    assert graph.nodes["queue", "erros"]["ready"] == 3
    assert graph.nodes["queue", "alertas"]["ready"] == 3
    assert graph.nodes["queue", "solta"]["ready"] == 0
    assert "3 prontas" in graph.nodes["queue", "erros"]["label"]


def test_generic_producer_points_at_entry_exchanges(curso):
    graph = topology_graph(curso)
    producer = ("producer", "produtor")
    assert set(graph.successors(producer)) == EXCHANGES - {("exchange", "auditoria")}


def test_named_producers(curso):
    graph = topology_graph(curso, producers={"loja": "eventos", "monitor": ["logs_direto", "cabecalhos"]})
    assert set(graph.successors(("producer", "loja"))) == {("exchange", "eventos")}
    assert set(graph.successors(("producer", "monitor"))) == {("exchange", "logs_direto"), ("exchange", "cabecalhos")}


def test_default_and_internal_exchanges_on_request(curso):
    graph = topology_graph(curso, show_default=True, show_internal=True, producers=False)
    assert ("exchange", "") in graph and ("exchange", "amq.rabbitmq.trace") in graph
    assert ("exchange", "amq.topic") in graph
    assert {v for v in graph.successors(("exchange", ""))} == QUEUES
    assert graph.edges[("exchange", ""), ("queue", "solta")]["label"] == "solta"


def test_consumers_counted_in_queue_box(curso):
    connection = curso.connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue="alertas", on_message_callback=lambda *args: None)
    connection.process_data_events(time_limit=0.2)
    graph = topology_graph(curso, producers=False, consumers=False)
    assert graph.nodes["queue", "alertas"]["consumers"] == 1
    assert "1 consumidor" in graph.nodes["queue", "alertas"]["label"]
    connection.close()


def test_tracer_queue_is_hidden(curso):
    with trace(curso):
        graph = topology_graph(curso, producers=False)
        assert set(graph.nodes) == EXCHANGES | QUEUES


def test_pictures_render_to_png(curso, tmp_path):
    for options in ({}, {"show_default": True, "show_internal": True}):
        graph = show_topology(curso, **options)
        path = tmp_path / "topologia.png"
        plot_topology(graph).savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Topologia" in repr(graph)


def test_empty_vhost_draws(course_broker, tmp_path):
    curso = setup("teste-topologia-vazia")
    try:
        graph = topology_graph(curso)
        assert graph.number_of_nodes() == 0
        plot_topology(graph).savefig(tmp_path / "vazio.png")
    finally:
        curso.cleanup(delete_vhost=True)
