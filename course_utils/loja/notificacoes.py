"""Notificações: tells the customer how each order ended.

    python -m course_utils.loja.notificacoes [--chaves "pagamento.*,estoque.indisponivel"]

Consumes, from its queue `notificacoes.eventos` (dead letters in `notificacoes.eventos.dlq`),
the events it cares about, by topic pattern (`pagamento.*`: approved and rejected; `#` would be
every event of the shop), and prints one line per notice. Stateless.
"""
from __future__ import annotations

import time

from . import servico

FILA = "notificacoes.eventos"
TEXTOS = {"pagamento.aprovado": "pagamento aprovado, pedido confirmado",
          "pagamento.rejeitado": "pagamento recusado",
          "estoque.indisponivel": "sem estoque, pedido cancelado",
          "estoque.liberado": "reserva desfeita, nada foi cobrado",
          "logistica.em_preparo": "pedido em preparo",
          "logistica.enviado": "pedido enviado"}


def main() -> None:
    args = servico.opcoes(__doc__, chaves=(str, "pagamento.*,estoque.indisponivel", "padrões de chave")).parse_args()
    connection, channel = servico.conectar()
    servico.declarar_fila(channel, FILA, args.chaves.split(","))

    def callback(ch, method, properties, body):
        corr = properties.correlation_id
        evento, motivo = servico.ler(method, properties, body)
        if evento is None:
            servico.rejeitar(ch, method, properties, motivo)
            return
        print(f"recebeu {method.routing_key} (corr {corr})")
        time.sleep(args.atraso)
        texto = TEXTOS.get(method.routing_key, method.routing_key)
        print(f"avisou o cliente: pedido {evento['pedido_id']}: {texto} (corr {corr})")
        ch.basic_ack(delivery_tag=method.delivery_tag)

    servico.consumir(connection, channel, {FILA: callback}, prefetch=args.prefetch)


if __name__ == "__main__":
    main()
