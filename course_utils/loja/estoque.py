"""Estoque: reserves the items of each new order (and, with --compensar, releases them again).

    python -m course_utils.loja.estoque [--dados PASTA] [--estoque camisa=10,caneca=5] [--atraso S] [--compensar]

Consumes `pedido.criado` from its queue `estoque.pedidos` (dead letters in `estoque.pedidos.dlq`)
and publishes `estoque.reservado` or `estoque.indisponivel`, with the order's correlation id.
State in `<dados>/estoque.db`: `estoque(sku, quantidade)`, `reservas(pedido_id, ...)` and the
INBOX `inbox(message_id)`: the message's id is recorded in the SAME transaction as the
reservation, so a redelivered or duplicated message (same message_id) is acked and skipped.

`--compensar` (chapter 13, the saga's compensation): Estoque also consumes `pagamento.rejeitado`
from a second queue `estoque.pagamentos` (dead letters in `estoque.pagamentos.dlq`). In ONE
transaction it gives the order's reserved quantities back to `estoque`, deletes its `reservas`
row and records the message_id in the inbox; after the commit it publishes `estoque.liberado`
(only when it released something: a repeated rejection, or one for an order with no reservation,
changes nothing), then acks.
"""
from __future__ import annotations

import json
import sqlite3
import time

from . import servico

FILA = "estoque.pedidos"
FILA_PAGAMENTOS = "estoque.pagamentos"  # --compensar: pagamento.rejeitado
ESQUEMA = """
CREATE TABLE IF NOT EXISTS estoque (sku TEXT PRIMARY KEY, quantidade INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservas (pedido_id TEXT PRIMARY KEY, itens TEXT NOT NULL, quem TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (message_id TEXT PRIMARY KEY, recebida_em REAL NOT NULL);
"""


def main() -> None:
    args = servico.opcoes(__doc__, estoque=(str, "camisa=10,caneca=5,bone=3", "sku=quantidade,..."),
                          compensar=(bool, False, "libera a reserva quando o pagamento é recusado")).parse_args()
    db = servico.banco(args.dados, "estoque", ESQUEMA)
    for par in filter(None, args.estoque.split(",")):
        sku, quantidade = par.split("=")
        db.execute("INSERT OR IGNORE INTO estoque VALUES (?, ?)", (sku, int(quantidade)))
    falhas = servico.Falhas(args.falhar_vezes)
    connection, channel = servico.conectar()
    servico.declarar_fila(channel, FILA, ["pedido.criado"])
    if args.compensar:
        servico.declarar_fila(channel, FILA_PAGAMENTOS, ["pagamento.rejeitado"])

    def callback(ch, method, properties, body):
        corr = properties.correlation_id
        pedido, motivo = servico.ler(method, properties, body)
        if pedido is None:
            servico.rejeitar(ch, method, properties, motivo)
            return
        print(f"recebeu {method.routing_key} (corr {corr})")
        time.sleep(args.atraso)
        try:
            falhas.tentar()
        except RuntimeError as exc:
            print(f"falhou: {exc}; devolvida à fila (corr {corr})")
            ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)
            return
        itens = pedido["itens"]
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO inbox VALUES (?, ?)", (properties.message_id, time.time()))
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK")
            print(f"duplicada ignorada: message_id {properties.message_id[:8]} (corr {corr})")
            ch.basic_ack(delivery_tag=method.delivery_tag)
            return
        falta = [i["sku"] for i in itens if (db.execute("SELECT quantidade FROM estoque WHERE sku = ?", (i["sku"],))
                                              .fetchone() or (0,))[0] < i["quantidade"]]
        if not falta:
            for i in itens:
                db.execute("UPDATE estoque SET quantidade = quantidade - ? WHERE sku = ?", (i["quantidade"], i["sku"]))
            db.execute("INSERT OR REPLACE INTO reservas VALUES (?, ?, ?)", (pedido["pedido_id"], json.dumps(itens), servico.NOME))
        db.execute("COMMIT")
        if falta:
            print(f"pedido {pedido['pedido_id']} sem estoque de {', '.join(falta)} (corr {corr})")
            servico.publicar(ch, "estoque.indisponivel", {"versao": 1, "pedido_id": pedido["pedido_id"],
                                                          "motivo": "sem estoque: " + ", ".join(falta)}, corr)
        else:
            print(f"pedido {pedido['pedido_id']} reservado (corr {corr})")
            servico.publicar(ch, "estoque.reservado", {"versao": 1, "pedido_id": pedido["pedido_id"], "itens": itens}, corr)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    def liberar(ch, method, properties, body):
        corr = properties.correlation_id
        rejeicao, motivo = servico.ler(method, properties, body)
        if rejeicao is None:
            servico.rejeitar(ch, method, properties, motivo)
            return
        print(f"recebeu {method.routing_key} (corr {corr})")
        pedido_id = rejeicao["pedido_id"]
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO inbox VALUES (?, ?)", (properties.message_id, time.time()))
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK")
            print(f"duplicada ignorada: message_id {properties.message_id[:8]} (corr {corr})")
            ch.basic_ack(delivery_tag=method.delivery_tag)
            return
        reserva = db.execute("SELECT itens FROM reservas WHERE pedido_id = ?", (pedido_id,)).fetchone()
        itens = json.loads(reserva[0]) if reserva else []
        for i in itens:
            db.execute("UPDATE estoque SET quantidade = quantidade + ? WHERE sku = ?", (i["quantidade"], i["sku"]))
        db.execute("DELETE FROM reservas WHERE pedido_id = ?", (pedido_id,))
        db.execute("COMMIT")
        if itens:
            print(f"pedido {pedido_id}: reserva liberada (corr {corr})")
            servico.publicar(ch, "estoque.liberado", {"versao": 1, "pedido_id": pedido_id, "itens": itens}, corr)
        else:
            print(f"pedido {pedido_id}: nenhuma reserva a liberar (corr {corr})")
        ch.basic_ack(delivery_tag=method.delivery_tag)

    callbacks = {FILA: callback, **({FILA_PAGAMENTOS: liberar} if args.compensar else {})}
    servico.consumir(connection, channel, callbacks, prefetch=args.prefetch)


if __name__ == "__main__":
    main()
