"""Topology graph: exactly the nodes and edges of a known set-up, read from the live broker."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.topology import plot_topology, show_topology, topology_graph  # noqa: E402
from course_utils.trace import trace  # noqa: E402
from figure_geometry import DISPLAY_WIDTH_PX, assert_readable, png_size  # noqa: E402


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


# pictures a learner can read: chapter 3's topologies, built on the broker as the chapter does ----
CH3_DIRECT = {"erros": ["error", "critical"], "plantao": ["critical"], "informativos": ["info", "warning"]}
CH3_TOPIC = {"kern": "kern.*", "kern_tudo": "kern.#", "criticos": "*.critical", "tudo": "#"}
CH3_HEADERS = {"contrato_urgente": {"x-match": "all", "tipo": "contrato", "prioridade": "alta"},
               "contrato_ou_urgente": {"x-match": "any", "tipo": "contrato", "prioridade": "alta"}}


def _build_chapter3(ch, stage):
    """The vhost of notebooks/03_trocas_e_filas.ipynb at section 3.3 or at the final map (3.11)."""
    ch.exchange_declare(exchange="logs_direto", exchange_type="direct", durable=True)
    for queue, keys in CH3_DIRECT.items():
        ch.queue_declare(queue=queue, durable=True)
        for key in keys:
            ch.queue_bind(exchange="logs_direto", queue=queue, routing_key=key)
    if stage == "3.3":
        return
    ch.exchange_declare(exchange="noticias", exchange_type="fanout", durable=True)
    for queue in ("tela", "arquivo"):
        ch.queue_declare(queue=queue, durable=True)
    ch.queue_bind(exchange="noticias", queue="tela")
    ch.queue_bind(exchange="noticias", queue="arquivo", routing_key="qualquer")
    ch.exchange_declare(exchange="logs_topico", exchange_type="topic", durable=True)
    for queue, key in CH3_TOPIC.items():
        ch.queue_declare(queue=queue, durable=True)
        ch.queue_bind(exchange="logs_topico", queue=queue, routing_key=key)
    ch.exchange_declare(exchange="documentos", exchange_type="headers", durable=True)
    for queue, arguments in CH3_HEADERS.items():
        ch.queue_declare(queue=queue, durable=True)
        ch.queue_bind(exchange="documentos", queue=queue, arguments=arguments)
    ch.exchange_declare(exchange="eventos", exchange_type="topic", durable=True)
    ch.exchange_declare(exchange="auditoria", exchange_type="fanout", durable=True)
    ch.exchange_bind(destination="auditoria", source="eventos", routing_key="pedido.#")
    for queue in ("pedidos_br", "auditoria_log", "auditoria_painel"):
        ch.queue_declare(queue=queue, durable=True)
    ch.queue_bind(exchange="eventos", queue="pedidos_br", routing_key="pedido.*.br")
    ch.queue_bind(exchange="auditoria", queue="auditoria_log")
    ch.queue_bind(exchange="auditoria", queue="auditoria_painel")
    ch.queue_bind(exchange="eventos", queue="auditoria_log", routing_key="#.br")
    ch.basic_publish(exchange="eventos", routing_key="pedido.novo.br", body="pedido 42")
    ch.exchange_declare(exchange="direct_logs", exchange_type="direct", durable=True)
    ch.queue_declare(queue="logs_info", durable=True)
    ch.queue_bind(exchange="direct_logs", queue="logs_info", routing_key="info")


@pytest.fixture(params=["3.3", "3.11"])
def chapter3(course_broker, request):
    curso = setup("teste-topologia-cap03")
    with curso.connect() as connection:
        _build_chapter3(connection.channel(), request.param)
    yield curso, request.param
    curso.cleanup(delete_vhost=True)


def test_chapter3_pictures_have_no_overlapping_text_and_readable_sizes(chapter3, tmp_path):
    curso, stage = chapter3
    graph = topology_graph(curso, show_default=stage == "3.3")  # as the chapter calls it
    fig = plot_topology(graph)
    fig.savefig(tmp_path / f"cap03-{stage}.png", dpi=fig.dpi, bbox_inches="tight")
    texts = assert_readable(fig)
    drawn = [t.text for t in texts]
    for u, v, data in graph.edges(data=True):  # every binding key is drawn, once
        if data["label"]:
            key = _drawn_key(data["label"], drawn)
            assert drawn.count(key) == 1, (data["label"], drawn)
    assert png_size(fig)[0] <= DISPLAY_WIDTH_PX


def _drawn_key(label, drawn):
    """The drawn text of an edge label (header matches may be wrapped onto several lines)."""
    def words(text):
        return text.replace(",", " ").split()
    matches = [d for d in drawn if words(d) == words(label)]
    return matches[0] if matches else label


def test_demo_topology_is_readable(curso):
    fig = plot_topology(topology_graph(curso))
    assert_readable(fig)


def test_consumers_the_api_does_not_detail_yet_stay_apart():
    """The management API shows `channel_details: []` for a consumer it has just registered: three
    such consumers are three nodes, not one '? (canal ?)'."""
    import networkx as nx

    from course_utils import topology

    class _Management:
        def connections(self):
            return []

        def consumers(self):
            return [{"queue": {"name": "tarefas"}, "channel_details": [], "consumer_tag": f"ctag{i}.abc"}
                    for i in range(3)]

    graph = nx.MultiDiGraph()
    graph.add_node(("queue", "tarefas"), kind="queue", name="tarefas")
    topology._add_consumers(graph, _Management())
    consumers = [n for n in graph if n[0] == "consumer"]
    assert len(consumers) == 3 and all(graph.has_edge(("queue", "tarefas"), n) for n in consumers)
