"""Routing tables match RabbitMQ's real routing: direct, fanout, topic (* and #), headers (all/any)."""
import matplotlib

matplotlib.use("Agg")

import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.errors import CourseError  # noqa: E402
from course_utils.routing import bound_queues, plot_routing, routing_table  # noqa: E402
from figure_geometry import assert_readable  # noqa: E402


@pytest.fixture
def curso(course_broker):
    curso = setup("teste-roteamento")
    yield curso
    curso.cleanup(delete_vhost=True)


def _declare(curso, exchange, exchange_type, bindings):
    """bindings: [(queue, key or headers dict)]"""
    with curso.connect() as connection:
        ch = connection.channel()
        ch.exchange_declare(exchange=exchange, exchange_type=exchange_type, durable=True)
        for queue, binding in bindings:
            ch.queue_declare(queue=queue, durable=True)
            if isinstance(binding, dict):
                ch.queue_bind(queue=queue, exchange=exchange, arguments=binding)
            else:
                ch.queue_bind(queue=queue, exchange=exchange, routing_key=binding)


def _expected(rows: dict, columns: list) -> pd.DataFrame:
    return pd.DataFrame([[q in hits for q in columns] for hits in rows.values()],
                        index=pd.Index(list(rows), name="mensagem"), columns=pd.Index(columns, name="fila"))


def _depth(curso, queue):
    with curso.connect() as connection:
        return connection.channel().queue_declare(queue=queue, passive=True).method.message_count


def test_direct_routes_by_binding_key_not_queue_name(curso):
    _declare(curso, "logs_direto", "direct",
             [("erros", "error"), ("erros", "critical"), ("alertas", "critical"), ("info", "info")])
    table = routing_table(curso, "logs_direto", ["error", "critical", "info", "erros", "debug"], show=False)
    columns = ["alertas", "erros", "info"]
    expected = _expected({"error": {"erros"}, "critical": {"erros", "alertas"}, "info": {"info"},
                          "erros": set(), "debug": set()}, columns)
    pd.testing.assert_frame_equal(table[columns], expected)


def test_fanout_ignores_the_routing_key(curso):
    _declare(curso, "logs", "fanout", [("tela", ""), ("arquivo", "qualquer")])
    table = routing_table(curso, "logs", ["", "abc", "x.y"], show=False)
    assert table.to_numpy().all() and sorted(table.columns) == ["arquivo", "tela"]


def test_topic_star_and_hash(curso):
    _declare(curso, "topico", "topic", [("kern", "kern.*"), ("criticos", "*.critical"),
                                        ("tudo", "#"), ("pedidos_br", "pedido.#.br")])
    messages = ["kern.critical", "kern.info", "kern", "kern.info.disk", "app.critical",
                "pedido.br", "pedido.sp.centro.br", "pedido.br.sp", ""]
    table = routing_table(curso, "topico", messages, show=False)
    columns = ["criticos", "kern", "pedidos_br", "tudo"]
    expected = _expected({
        "kern.critical": {"kern", "criticos", "tudo"},
        "kern.info": {"kern", "tudo"},
        "kern": {"tudo"},                       # * needs exactly one word
        "kern.info.disk": {"tudo"},
        "app.critical": {"criticos", "tudo"},
        "pedido.br": {"pedidos_br", "tudo"},    # # matches zero words
        "pedido.sp.centro.br": {"pedidos_br", "tudo"},
        "pedido.br.sp": {"tudo"},
        '""': {"tudo"},                         # # matches the empty key too
    }, columns)
    pd.testing.assert_frame_equal(table[columns], expected)


def test_headers_all_and_any(curso):
    _declare(curso, "cabecalhos", "headers", [
        ("azul_e_g", {"x-match": "all", "cor": "azul", "tam": "g"}),
        ("azul_ou_g", {"x-match": "any", "cor": "azul", "tam": "g"}),
    ])
    messages = [{"cor": "azul", "tam": "g"}, {"cor": "azul"}, {"tam": "g", "peso": "1"},
                {"cor": "verde", "tam": "p"}, {}, ("chave.ignorada", {"cor": "azul", "tam": "g", "extra": "x"})]
    table = routing_table(curso, "cabecalhos", messages, show=False)
    assert table["azul_e_g"].tolist() == [True, False, False, False, False, True]
    assert table["azul_ou_g"].tolist() == [True, True, True, False, False, True]
    assert list(table.index)[:2] == ["cor=azul, tam=g", "cor=azul"]


def test_default_exchange_routes_by_queue_name(curso):
    _declare(curso, "nao_usada", "direct", [("a", "x"), ("b", "y")])
    table = routing_table(curso, "", ["a", "b", "x"], queues=["a", "b"], show=False)
    assert table.to_numpy().tolist() == [[True, False], [False, True], [False, False]]


def test_exchange_to_exchange_and_alternate_exchange(curso):
    with curso.connect() as connection:
        ch = connection.channel()
        ch.exchange_declare(exchange="nao_roteadas", exchange_type="fanout", durable=True)
        ch.exchange_declare(exchange="entrada", exchange_type="direct", durable=True,
                            arguments={"alternate-exchange": "nao_roteadas"})
        ch.exchange_declare(exchange="copia", exchange_type="fanout", durable=True)
        for queue in ("pedidos", "auditoria", "perdidas"):
            ch.queue_declare(queue=queue, durable=True)
        ch.queue_bind(queue="pedidos", exchange="entrada", routing_key="pedido")
        ch.exchange_bind(destination="copia", source="entrada", routing_key="pedido")
        ch.queue_bind(queue="auditoria", exchange="copia")
        ch.queue_bind(queue="perdidas", exchange="nao_roteadas")
    assert set(bound_queues(curso, "entrada")) == {"pedidos", "auditoria", "perdidas"}
    table = routing_table(curso, "entrada", ["pedido", "outra"], show=False)
    assert table.loc["pedido"].to_dict() == {"pedidos": True, "auditoria": True, "perdidas": False}
    assert table.loc["outra"].to_dict() == {"pedidos": False, "auditoria": False, "perdidas": True}


def test_probes_are_taken_back_and_old_messages_stay(curso):
    _declare(curso, "logs", "fanout", [("tela", "")])
    with curso.connect() as connection:
        ch = connection.channel()
        for body in (b"velha 1", b"velha 2"):
            ch.basic_publish(exchange="", routing_key="tela", body=body)
    routing_table(curso, "logs", ["a", "b", "c"], show=False)
    assert _depth(curso, "tela") == 2
    with curso.connect() as connection:
        ch = connection.channel()
        bodies = [ch.basic_get(queue="tela", auto_ack=True)[2] for _ in range(2)]
    assert bodies == [b"velha 1", b"velha 2"]
    routing_table(curso, "logs", ["a", "b"], keep=True, show=False)
    assert _depth(curso, "tela") == 2


def test_clear_errors(curso):
    with pytest.raises(CourseError, match="não existe"):
        routing_table(curso, "nao_existe", ["x"], show=False)
    _declare(curso, "logs", "fanout", [("tela", "")])
    connection = curso.connect()
    connection.channel().basic_consume(queue="tela", on_message_callback=lambda *a: None)
    with pytest.raises(CourseError, match="consumidores"):
        routing_table(curso, "logs", ["x"], show=False)
    connection.close()
    with curso.connect() as c:
        c.channel().exchange_declare(exchange="interna", exchange_type="direct", durable=True, internal=True)
    with pytest.raises(CourseError, match="interna"):
        routing_table(curso, "interna", ["x"], show=False)


def test_heat_map_renders_to_png(curso, tmp_path):
    _declare(curso, "topico", "topic", [("kern", "kern.*"), ("tudo", "#")])
    table = routing_table(curso, "topico", ["kern.a", "b"], show=True)
    assert table.attrs["bindings"] == {"kern": "kern.*", "tudo": "#"}
    path = tmp_path / "roteamento.png"
    plot_routing(table).savefig(path)
    assert path.read_bytes()[:4] == b"\x89PNG"


# what a notebook shows --------------------------------------------------------------------------
def _run_in_kernel(cells: list[str]) -> list[list[dict]]:
    """Run code cells in a real Jupyter kernel (as JupyterLab does); the outputs of each cell."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    return [cell.outputs for cell in nb.cells]


def _kinds(outputs: list[dict]) -> list[str]:
    """'imagem' for a picture, 'tabela' for an HTML table, 'texto' for anything else shown."""
    kinds = []
    for out in outputs:
        data = out.get("data", {})
        kinds.append("imagem" if "image/png" in data else "tabela" if "text/html" in data
                     else "texto" if out.get("output_type") != "error" else f"erro: {out.get('evalue')}")
    return kinds


def test_a_routing_table_shows_once_in_a_notebook(curso):
    prelude = (f"from course_utils import setup\nfrom course_utils.routing import routing_table\n"
               f"curso = setup({curso.name!r})  # recreates the vhost, as a chapter does\n"
               "with curso.connect() as connection:\n"
               "    ch = connection.channel()\n"
               "    ch.exchange_declare(exchange='logs', exchange_type='fanout', durable=True)\n"
               "    for fila in ('tela', 'arquivo'):\n"
               "        ch.queue_declare(queue=fila, durable=True)\n"
               "        ch.queue_bind(queue=fila, exchange='logs')")
    outputs = _run_in_kernel([
        prelude,
        'routing_table(curso, "logs", ["a", "b"])',                 # the cell's value: one heat-map
        'tabela = routing_table(curso, "logs", ["a"])',            # assigned: still drawn, once
        "tabela",                                                  # a later cell: drawn again
        'routing_table(curso, "logs", ["a"], show=False)',         # not drawn by the call: by its value
        'tabela.rename(columns={"tela": "t"})',                    # derived: the True/False table
    ])
    assert [_kinds(o) for o in outputs[1:]] == [["imagem"], ["imagem"], ["imagem"], ["imagem"], ["tabela"]]


def test_chapter3_heat_maps_are_readable(curso, tmp_path):
    """Chapter 3's widest heat-map: one queue per topic binding key ("casos de borda")."""
    keys = ["#", "*", "kern.*", "kern.#", "#.critical", "a.*.b", "a.#.b", "kern", "ped*"]
    _declare(curso, "bordas", "topic", [(f"borda_{i}", key) for i, key in enumerate(keys, start=1)])
    table = routing_table(curso, "bordas", ["", "kern", "kern.info", "critical", "a.b", "a.x.b", "a.x.y.b",
                                            "a..b", "Kern.info", "pedido", "ped*"], show=False)
    fig = plot_routing(table)
    fig.savefig(tmp_path / "bordas.png", dpi=fig.dpi, bbox_inches="tight")
    assert_readable(fig)
    _declare(curso, "documentos", "headers", [
        ("contrato_urgente", {"x-match": "all", "tipo": "contrato", "prioridade": "alta"}),
        ("contrato_ou_urgente", {"x-match": "any", "tipo": "contrato", "prioridade": "alta"})])
    table = routing_table(curso, "documentos", [{"tipo": "contrato", "prioridade": "alta"}, {"tipo": "contrato"},
                                                ("qualquer.routing.key", {"tipo": "contrato", "prioridade": "alta"})],
                          show=False)
    assert_readable(plot_routing(table))
