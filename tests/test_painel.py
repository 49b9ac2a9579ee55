"""course_utils.loja.painel: the live view of the shop's orders, fed by a copy of every event."""
import json
import threading
import time

import matplotlib

matplotlib.use("Agg")
import pika  # noqa: E402
import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.loja import servico  # noqa: E402
from course_utils.loja.painel import Painel  # noqa: E402

CORPOS = {"pedido.criado": {"cliente": "ana", "itens": [{"sku": "camisa", "quantidade": 1}], "total": 49.9},
          "estoque.reservado": {"itens": [{"sku": "camisa", "quantidade": 1}]},
          "estoque.indisponivel": {"motivo": "sem estoque"}, "pagamento.aprovado": {"valor": 49.9},
          "pagamento.rejeitado": {"motivo": "recusado"}, "estoque.liberado": {"itens": [{"sku": "camisa", "quantidade": 1}]},
          "logistica.em_preparo": {}, "logistica.enviado": {"codigo_rastreio": "LG1BR"}}
VIAGENS = {"p-1": ["pedido.criado", "estoque.reservado", "pagamento.aprovado", "logistica.em_preparo", "logistica.enviado"],
           "p-2": ["pedido.criado", "estoque.indisponivel"],
           "p-3": ["pedido.criado", "estoque.reservado", "pagamento.rejeitado", "estoque.liberado"],
           "p-4": ["pedido.criado", "estoque.reservado"],
           "p-5": ["logistica.enviado", "pedido.criado"]}  # out of order: the most advanced event wins


@pytest.fixture
def sandbox(course_broker):
    curso = setup("teste-painel")
    connection = pika.BlockingConnection(curso.params())
    channel = connection.channel()
    channel.confirm_delivery()
    channel.exchange_declare("loja.eventos", exchange_type="topic", durable=True)
    yield curso, channel
    curso.cleanup(connection, delete_vhost=True)


def publicar(channel, viagens):
    for pedido_id, chaves in viagens.items():
        for chave in chaves:
            channel.basic_publish("loja.eventos", chave, json.dumps({"versao": 1, "pedido_id": pedido_id, **CORPOS[chave]}),
                                  servico.propriedades(chave, pedido_id))


def painel_threads():
    return [t for t in threading.enumerate() if t.name.startswith("curso-painel")]


def conexoes(curso, nome="painel", timeout=5.0, presente=False):
    """The vhost's connections called `nome`, once their presence is `presente` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        achadas = [c for c in curso.management.connections()
                   if c.get("client_properties", {}).get("connection_name") == nome]
        if bool(achadas) == presente or time.monotonic() > deadline:
            return achadas
        time.sleep(0.2)


def test_states_tables_and_the_widget(sandbox):
    curso, channel = sandbox
    channel.queue_declare("estoque.pedidos", durable=True)  # a service's queue: the panel takes nothing from it
    channel.queue_bind("estoque.pedidos", "loja.eventos", routing_key="pedido.criado")
    painel = Painel(curso)
    try:
        assert curso.management.queue(painel.fila)["exclusive"] is True
        publicar(channel, VIAGENS)
        assert painel.esperar(4, timeout=5)
        time.sleep(0.1)  # p-4's last event arrives with the others; let it land
        estados = painel.estados().set_index("pedido_id")
        assert estados["estado"].to_dict() == {"p-1": "enviado", "p-2": "cancelado", "p-3": "estornado",
                                               "p-4": "reservado", "p-5": "enviado"}
        assert estados.loc["p-2", "motivo"] == "sem estoque" and estados.loc["p-3", "motivo"] == "pagamento recusado"
        assert estados.loc["p-1", "logistica.enviado"] >= estados.loc["p-1", "pedido.criado"] >= 0
        eventos = painel.eventos()
        assert list(eventos.columns) == ["t", "chave", "tipo", "pedido_id", "message_id", "redelivered", "repetida"]
        assert len(eventos) == sum(map(len, VIAGENS.values())) and not eventos[["redelivered", "repetida"]].any().any()
        assert eventos.loc[eventos["chave"] == "estoque.liberado", "tipo"].tolist() == ["EstoqueLiberado"]
        latencias = painel.latencias()
        assert list(latencias.columns) == ["n", "p50", "p95", "p99"]
        assert latencias.loc["pedido.criado → estoque.*", "n"] == 4  # p-1..p-4; p-5 never reached Estoque
        assert latencias.loc["total: pedido.criado → estado final", "n"] == 4  # p-1, p-2, p-3, p-5
        assert (latencias["p50"].dropna() <= latencias["p99"].dropna()).all()
        vazao = painel.vazao()
        assert vazao.loc["pedido.criado", "eventos"] == 5 and "eventos/s" in vazao.columns
        assert painel.vazao(por_segundo=True).to_numpy().sum() == len(eventos)
        fig = painel.plot_latencias()
        assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 3 * 5  # 3 percentiles x 5 stages seen
        time.sleep(0.6)  # one refresh period
        html = painel.widget.value
        assert "p-3" in html and "estornado" in html and "5 pedidos" in html
        assert channel.queue_declare("estoque.pedidos", passive=True).method.message_count == 5
        de_novo = servico.propriedades("logistica.enviado", "p-1", message_id=eventos["message_id"].iloc[4])
        channel.basic_publish("loja.eventos", "logistica.enviado", json.dumps(
            {"versao": 1, "pedido_id": "p-1", **CORPOS["logistica.enviado"]}), de_novo)  # published again
        time.sleep(0.6)
        assert painel.eventos()["repetida"].tolist()[-1] is True and painel.finalizados == 4
        assert "1 repetidos" in painel.widget.value
        painel.limpar()
        assert painel.estados().empty and painel.eventos().empty and painel.finalizados == 0
    finally:
        painel.close()


def test_esperar_returns_false_at_the_timeout(sandbox):
    curso, channel = sandbox
    with Painel(curso) as painel:
        publicar(channel, {"p-1": VIAGENS["p-4"]})
        inicio = time.monotonic()
        assert painel.esperar(1, timeout=0.5) is False
        assert 0.5 <= time.monotonic() - inicio < 1.0
        assert painel.estados()["estado"].tolist() == ["reservado"]


def test_close_leaves_no_thread_and_no_connection(sandbox):
    curso, channel = sandbox
    antes = painel_threads()
    painel = Painel(curso)
    assert conexoes(curso, presente=True), "the panel's connection should show"
    fila = painel.fila
    painel.close()
    painel.close()  # idempotent
    assert painel_threads() == antes and not painel.aberto
    assert conexoes(curso) == []
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # the exclusive queue went with its connection
        channel.connection.channel().queue_declare(fila, passive=True)
    inicio = time.monotonic()
    assert painel.esperar(1, timeout=5) is False and time.monotonic() - inicio < 0.5  # closed: at once

    segundo = Painel(curso)
    terceiro = Painel(curso)  # the cell run again: the panel before it is closed
    assert not segundo.aberto and terceiro.aberto
    curso.cleanup()  # the notebook's clean-up closes it too
    assert not terceiro.aberto and painel_threads() == antes
