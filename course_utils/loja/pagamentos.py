"""Pagamentos: charges each order whose stock was reserved, once.

    python -m course_utils.loja.pagamentos [--dados PASTA] [--rejeitar-acima VALOR] [--atraso S]
                                           [--falhar-vezes N] [--cair-apos N] [--sem-idempotencia]

Consumes `estoque.reservado` from its queue `pagamentos.reservas` (dead letters in
`pagamentos.reservas.dlq`), prices the items with the catalogue and publishes
`pagamento.aprovado` (value) or `pagamento.rejeitado` (when the value is above `--rejeitar-acima`).
`--atraso S` is the card gateway's time per charge.

State in `<dados>/pagamentos.db` (default: the current folder): one row per charge in
`cobrancas(id, pedido_id, valor, resultado, quem, em)`. The IDEMPOTENCY KEY is the order
(`pedido_id`, a business key: two messages about one order are one charge, whatever their
message_id): inside `BEGIN IMMEDIATE`, an order that has a charge already is not charged again;
its stored outcome is published again (an order whose result was never published still gets it,
with the same message_id as the first time, so a consumer's inbox drops a copy) and the message
is acked. The table has no unique constraint: the idempotency is this code's, so that
`--sem-idempotencia` (charge every delivery) can show the double charge.
`--cair-apos N` kills the service (os._exit) right after the Nth charge's COMMIT, before it
publishes and acks: the message is redelivered to whoever consumes next.
"""
from __future__ import annotations

import os
import time
import uuid

from . import catalogo, servico

FILA = "pagamentos.reservas"
ESQUEMA = """
CREATE TABLE IF NOT EXISTS cobrancas (id INTEGER PRIMARY KEY AUTOINCREMENT, pedido_id TEXT NOT NULL,
                                      valor REAL NOT NULL, resultado TEXT NOT NULL, quem TEXT NOT NULL,
                                      em REAL NOT NULL);
CREATE INDEX IF NOT EXISTS cobrancas_pedido ON cobrancas (pedido_id);
"""
RESULTADO = {"aprovado": "pagamento.aprovado", "rejeitado": "pagamento.rejeitado"}


def message_id(cobranca: int, em: float) -> str:
    """The message_id of a charge's outcome: the same each time it is published (from the charge's
    row: its id and time)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pagamentos:{cobranca}:{em!r}"))


def main() -> None:
    args = servico.opcoes(__doc__, rejeitar_acima=(float, float("inf"), "rejeita pagamentos acima deste valor"),
                          cair_apos=(int, 0, "morre logo após o COMMIT da N-ésima cobrança, antes de publicar"),
                          sem_idempotencia=(bool, False, "cobra toda entrega, mesmo de pedido já cobrado")).parse_args()
    db = servico.banco(args.dados, "pagamentos", ESQUEMA)
    falhas = servico.Falhas(args.falhar_vezes)
    connection, channel = servico.conectar()
    servico.declarar_fila(channel, FILA, ["estoque.reservado"])
    cobradas = 0

    def publicar_resultado(ch, cobranca, em, pedido_id, valor, resultado, corr):
        corpo = {"versao": 1, "pedido_id": pedido_id}
        corpo.update({"valor": valor} if resultado == "aprovado" else {"motivo": f"valor {valor:.2f} acima do limite"})
        servico.publicar(ch, RESULTADO[resultado], corpo, corr, message_id=message_id(cobranca, em))

    def callback(ch, method, properties, body):
        nonlocal cobradas
        corr = properties.correlation_id
        reserva, motivo = servico.ler(method, properties, body)
        if reserva is None:
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
        pedido_id = reserva["pedido_id"]
        db.execute("BEGIN IMMEDIATE")  # one charger at a time decides whether this order is charged
        anterior = None if args.sem_idempotencia else db.execute(
            "SELECT id, em, valor, resultado FROM cobrancas WHERE pedido_id = ? ORDER BY id LIMIT 1", (pedido_id,)).fetchone()
        if anterior is not None:
            db.execute("COMMIT")
            cobranca, em, valor, resultado = anterior
            print(f"pedido {pedido_id} já cobrado (cobrança {cobranca}): publica de novo o resultado (corr {corr})")
        else:
            valor = catalogo.valor(reserva["itens"])
            resultado, em = "rejeitado" if valor > args.rejeitar_acima else "aprovado", time.time()
            cobranca = db.execute("INSERT INTO cobrancas (pedido_id, valor, resultado, quem, em) VALUES (?, ?, ?, ?, ?)",
                                  (pedido_id, valor, resultado, servico.NOME, em)).lastrowid
            db.execute("COMMIT")
            cobradas += 1
            print(f"pedido {pedido_id}: R$ {valor:.2f} {'recusado' if resultado == 'rejeitado' else 'aprovado'} "
                  f"(corr {corr})")
            if cobradas == args.cair_apos:
                print(f"caiu depois de cobrar o pedido {pedido_id}, antes de publicar e dar o ack (corr {corr})",
                      flush=True)
                os._exit(1)
        publicar_resultado(ch, cobranca, em, pedido_id, valor, resultado, corr)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    servico.consumir(connection, channel, {FILA: callback}, prefetch=args.prefetch)


if __name__ == "__main__":
    main()
