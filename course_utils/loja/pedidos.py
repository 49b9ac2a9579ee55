"""Pedidos: takes orders and announces them, with a transactional OUTBOX.

    python -m course_utils.loja.pedidos [--dados PASTA] [--atraso S]

Consumes the COMMAND `CriarPedido` from its queue `pedidos.comandos` (sent to it by name through
the default exchange: a command has one recipient) and the events `pagamento.*` and
`estoque.indisponivel` from `pedidos.eventos` (to update the order's status). It never publishes
itself: `criar_pedido()` writes the order row AND its `pedido.criado` event into the `outbox`
table in ONE SQLite transaction; the relay (`python -m course_utils.loja.relay`) publishes the
outbox. Both queues dead-letter what they cannot read into `<fila>.dlq`.

State in `<dados>/pedidos.db`: `pedidos(pedido_id, cliente, total, status)` and
`outbox(id, message_id, chave, corpo, correlation_id, enviado)`.
"""
from __future__ import annotations

import json
import time
import uuid

from . import servico
from .contratos import erros

FILA_COMANDOS = "pedidos.comandos"
FILA_EVENTOS = "pedidos.eventos"
ESQUEMA = """
CREATE TABLE IF NOT EXISTS pedidos (pedido_id TEXT PRIMARY KEY, cliente TEXT NOT NULL, total REAL NOT NULL,
                                    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL,
                                   chave TEXT NOT NULL, corpo TEXT NOT NULL, correlation_id TEXT NOT NULL,
                                   enviado INTEGER NOT NULL DEFAULT 0);
"""
STATUS = {"pagamento.aprovado": "pago", "pagamento.rejeitado": "cancelado", "estoque.indisponivel": "cancelado"}


def abrir(pasta: str):
    """The service's database (`<pasta>/pedidos.db`), tables created."""
    return servico.banco(pasta, "pedidos", ESQUEMA)


def criar_pedido(db, pedido: dict) -> bool:
    """Write the order and its `pedido.criado` event in one transaction; False if it existed."""
    evento = {"versao": 1, **{k: pedido[k] for k in ("pedido_id", "cliente", "itens", "total")}}
    db.execute("BEGIN IMMEDIATE")
    try:
        novo = db.execute("INSERT OR IGNORE INTO pedidos VALUES (?, ?, ?, 'criado')",
                          (pedido["pedido_id"], pedido["cliente"], pedido["total"])).rowcount == 1
        if novo:
            db.execute("INSERT INTO outbox (message_id, chave, corpo, correlation_id) VALUES (?, ?, ?, ?)",
                       (str(uuid.uuid4()), "pedido.criado", json.dumps(evento), pedido["pedido_id"]))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return novo


def main() -> None:
    args = servico.opcoes(__doc__).parse_args()
    db = abrir(args.dados)
    connection, channel = servico.conectar()
    servico.declarar_fila(channel, FILA_COMANDOS, [])
    servico.declarar_fila(channel, FILA_EVENTOS, list(STATUS))

    def comando(ch, method, properties, body):
        corr = properties.correlation_id
        try:
            pedido = json.loads(body)
            problemas = erros("pedido.criado", {"versao": 1, **pedido})
        except (ValueError, TypeError):
            problemas = ["não é um objeto JSON"]
        if problemas:
            servico.rejeitar(ch, method, properties, "; ".join(problemas))
            return
        print(f"recebeu {properties.type or 'CriarPedido'} (corr {corr})")
        time.sleep(args.atraso)
        if criar_pedido(db, pedido):
            print(f"gravou pedido {pedido['pedido_id']} + outbox (corr {corr})")
        else:
            print(f"pedido {pedido['pedido_id']} já existia (corr {corr})")
        ch.basic_ack(delivery_tag=method.delivery_tag)

    def evento(ch, method, properties, body):
        corr = properties.correlation_id
        corpo, motivo = servico.ler(method, properties, body)
        if corpo is None:
            servico.rejeitar(ch, method, properties, motivo)
            return
        print(f"recebeu {method.routing_key} (corr {corr})")
        db.execute("UPDATE pedidos SET status = ? WHERE pedido_id = ?", (STATUS[method.routing_key], corpo["pedido_id"]))
        print(f"pedido {corpo['pedido_id']}: {STATUS[method.routing_key]} (corr {corr})")
        ch.basic_ack(delivery_tag=method.delivery_tag)

    servico.consumir(connection, channel, {FILA_COMANDOS: comando, FILA_EVENTOS: evento}, prefetch=args.prefetch)


if __name__ == "__main__":
    main()
