"""course_utils.loja's services, run for real against the broker: an order flows end to end, a
stopped service catches up, and a relay that crashes between publish and mark loses nothing;
chapter 13's saga: Estoque's compensation releases once, Pagamentos charges an order once across a
crash (and twice without its idempotency), Logística retries with a delay and dead-letters."""
import json
import sqlite3
import time
import uuid

import pika
import pytest

from course_utils import setup
from course_utils.background import Background
from course_utils.loja import servico


@pytest.fixture
def loja(tmp_path):
    curso = setup("teste-loja")
    bg = Background(curso)
    connection = pika.BlockingConnection(curso.params())
    channel = connection.channel()
    channel.confirm_delivery()
    yield bg, channel, tmp_path
    bg.stop_all(quiet=True)
    curso.cleanup(connection, delete_vhost=True)


def pedir(channel, pedido_id, sku="camisa", quantidade=1):
    pedido = {"pedido_id": pedido_id, "cliente": "ana", "itens": [{"sku": sku, "quantidade": quantidade}], "total": 10.0}
    channel.basic_publish("", "pedidos.comandos", json.dumps(pedido), pika.BasicProperties(
        delivery_mode=2, content_type="application/json", type="CriarPedido", message_id=str(uuid.uuid4()),
        correlation_id=pedido_id))


def test_an_order_flows_and_a_stopped_service_catches_up(loja):
    bg, channel, dados = loja
    for nome, args in [("pedidos", ["--dados", dados]), ("relay", ["--dados", dados]),
                       ("estoque", ["--dados", dados, "--estoque", "camisa=5"]), ("pagamentos", []),
                       ("notificacoes", [])]:
        bg.module(nome, f"course_utils.loja.{nome}", *args)
    assert all(w.wait_for("pronto", timeout=15) for w in bg.workers.values())
    pedir(channel, "p-1")
    assert bg["notificacoes"].wait_for("pedido p-1: pagamento aprovado", timeout=10)
    assert bg["pedidos"].wait_for("pedido p-1: pago (corr p-1)", timeout=5)

    bg["estoque"].kill()
    pedir(channel, "p-2")
    assert bg["relay"].wait_for("marcou a linha 2", timeout=10)
    assert channel.queue_declare("estoque.pedidos", passive=True).method.message_count == 1
    bg.restart("estoque")
    assert bg["notificacoes"].wait_for("pedido p-2: pagamento aprovado", timeout=10)
    assert bg["pedidos"].wait_for("pedido p-2: pago (corr p-2)", timeout=5)
    with sqlite3.connect(dados / "pedidos.db") as db:
        assert dict(db.execute("SELECT pedido_id, status FROM pedidos")) == {"p-1": "pago", "p-2": "pago"}
    assert not any("Traceback" in w.output() for w in bg.workers.values())


def test_a_relay_crash_after_publish_is_absorbed_by_the_inbox(loja):
    bg, channel, dados = loja
    bg.module("pedidos", "course_utils.loja.pedidos", "--dados", dados)
    bg.module("estoque", "course_utils.loja.estoque", "--dados", dados, "--estoque", "caneca=10")
    assert bg["pedidos"].wait_for("pronto", timeout=15) and bg["estoque"].wait_for("pronto", timeout=15)
    for n in (1, 2, 3):
        pedir(channel, f"p-{n}", "caneca")
    assert bg["pedidos"].wait_for("gravou pedido p-3", timeout=10)
    bg.module("relay", "course_utils.loja.relay", "--dados", dados, "--cair-apos", 2)
    assert bg["relay"].wait_for("caiu antes de marcar a linha 2", timeout=10)
    bg.module("relay-2", "course_utils.loja.relay", "--dados", dados)
    assert bg["estoque"].wait_for("pedido p-3 reservado", timeout=10)
    assert bg["estoque"].wait_for("duplicada ignorada", timeout=5)
    with sqlite3.connect(dados / "estoque.db") as db:
        assert db.execute("SELECT quantidade FROM estoque WHERE sku = 'caneca'").fetchone() == (7,)
        assert db.execute("SELECT COUNT(*) FROM reservas").fetchone() == (3,)
    # a message the service cannot read is dead-lettered once, not requeued
    channel.basic_publish("loja.eventos", "pedido.criado", b"{}", pika.BasicProperties(correlation_id="x"))
    assert bg["estoque"].wait_for("rejeitou", timeout=5)
    deadline = time.monotonic() + 3  # dead-lettering happens in the broker just after the reject
    while channel.queue_declare("estoque.pedidos.dlq", passive=True).method.message_count == 0 < deadline - time.monotonic():
        time.sleep(0.05)
    assert channel.queue_declare("estoque.pedidos.dlq", passive=True).method.message_count == 1
    assert bg["estoque"].output().count("rejeitou") == 1  # once: never requeued


# chapter 13: the saga's compensation, a charge once per order, the carrier retried with a delay

def evento(channel, chave, corpo, corr, message_id=None):
    """Publish a shop event as a service would (the properties convention, confirmed)."""
    channel.basic_publish("loja.eventos", chave, json.dumps({"versao": 1, "pedido_id": corr, **corpo}),
                          servico.propriedades(chave, corr, message_id))


def observar(channel, fila, chaves):
    """A queue of the test's own on the bus: what the services publish."""
    channel.exchange_declare("loja.eventos", exchange_type="topic", durable=True)
    channel.queue_declare(fila, durable=True)
    for chave in chaves:
        channel.queue_bind(fila, "loja.eventos", routing_key=chave)


def colher(channel, fila, n, timeout=5.0):
    """The next `n` messages of `fila` (fewer at the timeout): (routing key, properties, body) each."""
    deadline, got = time.monotonic() + timeout, []
    while len(got) < n and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(fila, auto_ack=True)
        if method is None:
            time.sleep(0.02)
            continue
        got.append((method.routing_key, properties, json.loads(body)))
    return got


def test_the_compensation_releases_a_reservation_exactly_once(loja):
    bg, channel, dados = loja
    observar(channel, "teste.liberado", ["estoque.liberado"])
    bg.module("estoque", "course_utils.loja.estoque", "--dados", dados, "--estoque", "camisa=5", "--compensar")
    assert bg["estoque"].wait_for("pronto", timeout=15)
    evento(channel, "pedido.criado", {"cliente": "ana", "itens": [{"sku": "camisa", "quantidade": 2}], "total": 99.8}, "p-1")
    assert bg["estoque"].wait_for("pedido p-1 reservado", timeout=5)
    rejeicao = str(uuid.uuid4())
    evento(channel, "pagamento.rejeitado", {"motivo": "cartão recusado"}, "p-1", message_id=rejeicao)
    evento(channel, "pagamento.rejeitado", {"motivo": "cartão recusado"}, "p-1", message_id=rejeicao)  # redelivered
    evento(channel, "pagamento.rejeitado", {"motivo": "de novo"}, "p-1")  # a second rejection of the order
    evento(channel, "pagamento.rejeitado", {"motivo": "?"}, "p-9")  # an order never reserved
    assert bg["estoque"].wait_for("nenhuma reserva a liberar (corr p-9)", timeout=5)
    liberados = colher(channel, "teste.liberado", 2, timeout=0.5)
    assert [(k, b["itens"], p.correlation_id, p.type) for k, p, b in liberados] == [
        ("estoque.liberado", [{"sku": "camisa", "quantidade": 2}], "p-1", "EstoqueLiberado")]
    saida = bg["estoque"].output()
    assert saida.count("reserva liberada") == 1 and "duplicada ignorada" in saida
    assert saida.count("nenhuma reserva a liberar") == 2  # the second rejection of p-1, and p-9
    with sqlite3.connect(dados / "estoque.db") as db:
        assert db.execute("SELECT quantidade FROM estoque WHERE sku = 'camisa'").fetchone() == (5,)
        assert db.execute("SELECT COUNT(*) FROM reservas").fetchone() == (0,)
    assert channel.queue_declare("estoque.pagamentos.dlq", passive=True).method.message_count == 0


def test_without_compensar_estoque_does_not_listen_to_payments(loja):
    bg, channel, dados = loja
    bg.module("estoque", "course_utils.loja.estoque", "--dados", dados)
    assert bg["estoque"].wait_for("pronto", timeout=15)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        channel.connection.channel().queue_declare("estoque.pagamentos", passive=True)


def reservas(channel, n):
    for k in range(1, n + 1):
        evento(channel, "estoque.reservado", {"itens": [{"sku": "caneca", "quantidade": k}]}, f"p-{k}")


def terminou(worker, timeout=5.0):
    """The worker's exit code once it has ended (None if it is still running at the timeout)."""
    deadline = time.monotonic() + timeout
    while worker.returncode is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return worker.returncode


def cobrancas(dados):
    with sqlite3.connect(dados / "pagamentos.db") as db:
        return db.execute("SELECT pedido_id, valor, resultado FROM cobrancas ORDER BY id").fetchall()


def test_pagamentos_killed_after_a_charge_charges_each_order_once_and_publishes_each_result(loja):
    bg, channel, dados = loja
    observar(channel, "teste.pagamentos", ["pagamento.*"])
    bg.module("pagamentos", "course_utils.loja.pagamentos", "--dados", dados, "--cair-apos", 2,
              "--rejeitar-acima", 60)
    assert bg["pagamentos"].wait_for("pronto", timeout=15)
    reservas(channel, 3)
    assert bg["pagamentos"].wait_for("caiu depois de cobrar o pedido p-2", timeout=5)
    assert terminou(bg["pagamentos"]) == 1
    bg.module("pagamentos-2", "course_utils.loja.pagamentos", "--dados", dados, "--rejeitar-acima", 60)
    resultados = colher(channel, "teste.pagamentos", 3, timeout=8)
    resultados += colher(channel, "teste.pagamentos", 1, timeout=0.3)  # nothing more
    assert sorted((b["pedido_id"], k) for k, _, b in resultados) == [
        ("p-1", "pagamento.aprovado"), ("p-2", "pagamento.aprovado"), ("p-3", "pagamento.rejeitado")]
    assert cobrancas(dados) == [("p-1", 25.0, "aprovado"), ("p-2", 50.0, "aprovado"), ("p-3", 75.0, "rejeitado")]
    assert "pedido p-2 já cobrado" in bg["pagamentos-2"].output()
    # a stored outcome goes out again with the message_id it would have had the first time
    evento(channel, "estoque.reservado", {"itens": [{"sku": "caneca", "quantidade": 1}]}, "p-1")
    (chave, propriedades, corpo), = colher(channel, "teste.pagamentos", 1)
    primeiro = next(p for k, p, b in resultados if b["pedido_id"] == "p-1")
    assert (chave, propriedades.message_id, corpo["valor"]) == ("pagamento.aprovado", primeiro.message_id, 25.0)
    assert len(cobrancas(dados)) == 3


def test_pagamentos_without_idempotency_charges_the_redelivered_order_twice(loja):
    bg, channel, dados = loja
    observar(channel, "teste.pagamentos", ["pagamento.*"])
    bg.module("pagamentos", "course_utils.loja.pagamentos", "--dados", dados, "--cair-apos", 2, "--sem-idempotencia")
    assert bg["pagamentos"].wait_for("pronto", timeout=15)
    reservas(channel, 3)
    assert bg["pagamentos"].wait_for("caiu depois de cobrar o pedido p-2", timeout=5)
    bg.module("pagamentos-2", "course_utils.loja.pagamentos", "--dados", dados, "--sem-idempotencia")
    assert len(colher(channel, "teste.pagamentos", 3, timeout=8)) == 3
    assert [pedido for pedido, _, _ in cobrancas(dados)] == ["p-1", "p-2", "p-2", "p-3"]


def test_logistica_retries_with_a_delay_counts_its_attempts_and_dead_letters_after_the_limit(loja):
    bg, channel, dados = loja
    observar(channel, "teste.logistica", ["logistica.*"])
    bg.module("logistica", "course_utils.loja.logistica", "--dados", dados, "--falhas-transportadora", 2,
              "--espera-ms", 300)
    assert bg["logistica"].wait_for("pronto", timeout=15)
    argumentos = channel.queue_declare("logistica.pagamentos.espera", durable=True, arguments={
        "x-message-ttl": 300, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "logistica.pagamentos"})
    assert argumentos.method.consumer_count == 0  # same arguments: the declaration is accepted
    aprovado, inicio = str(uuid.uuid4()), time.monotonic()
    evento(channel, "pagamento.aprovado", {"valor": 25.0}, "p-1", message_id=aprovado)
    got = colher(channel, "teste.logistica", 2, timeout=5)
    assert time.monotonic() - inicio >= 2 * 0.3  # two failures, each followed by a TTL in the wait queue
    assert [k for k, _, _ in got] == ["logistica.em_preparo", "logistica.enviado"]
    assert all(p.correlation_id == "p-1" for _, p, _ in got) and got[1][2]["codigo_rastreio"].startswith("LG")
    linhas = bg["logistica"].records()
    recebidas = [t for t, linha in linhas if "recebeu pagamento.aprovado" in linha]
    assert len(recebidas) == 3 and sum("transportadora falhou" in linha for _, linha in linhas) == 2
    # each retry came one TTL after the attempt before it (line times: a few ms of pipe jitter)
    assert all(0.29 <= t2 - t1 < 1.3 for t1, t2 in zip(recebidas, recebidas[1:])), recebidas
    saida = bg["logistica"].output()
    assert "transportadora falhou (tentativa 1 de 3); nova tentativa em 0,3 s (corr p-1)" in saida
    assert "recebeu pagamento.aprovado (tentativa 3 de 3) (corr p-1)" in saida
    evento(channel, "pagamento.aprovado", {"valor": 25.0}, "p-1", message_id=aprovado)  # a duplicate
    assert bg["logistica"].wait_for("duplicada ignorada", timeout=5)
    with sqlite3.connect(dados / "logistica.db") as db:
        assert db.execute("SELECT pedido_id FROM envios").fetchall() == [("p-1",)]

    bg.module("logistica", "course_utils.loja.logistica", "--dados", dados, "--falhas-transportadora", 9,
              "--espera-ms", 100, "--tentativas", 2)  # another TTL: the empty wait queue is recreated
    assert bg["logistica"].wait_for("pronto", timeout=15), bg["logistica"].output()
    evento(channel, "pagamento.aprovado", {"valor": 25.0}, "p-2")
    assert bg["logistica"].wait_for("desistiu: rejeitada -> dlq (corr p-2)", timeout=5)
    (chave, propriedades, corpo), = colher(channel, "logistica.pagamentos.dlq", 1)
    assert corpo["pedido_id"] == "p-2" and propriedades.headers["x-tentativas"] == 1
    assert propriedades.headers["x-death"][0]["reason"] == "rejected"
    assert "logistica.pagamentos.espera recriada com x-message-ttl = 100 ms" in bg["logistica"].output()
    assert not any("Traceback" in w.output() for w in bg.workers.values())
