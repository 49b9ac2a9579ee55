"""Preços: a request/reply (RPC) service, chapter 6's pattern between two services.

    python -m course_utils.loja.precos [--atraso S]

Consumes requests `{"itens": [...]}` from the queue `precos.consultas` (default exchange) and
replies to each request's `reply_to` with `{"valor": ...}` and the request's `correlation_id`.
Unlike the event services, its caller WAITS for it: if Preços is down, the caller times out.
"""
from __future__ import annotations

import json
import time

import pika

from . import catalogo, servico

FILA = "precos.consultas"


def main() -> None:
    args = servico.opcoes(__doc__).parse_args()
    connection, channel = servico.conectar()
    servico.declarar_fila(channel, FILA, [])

    def callback(ch, method, properties, body):
        try:
            itens = json.loads(body)["itens"]
            valor = catalogo.valor(itens)
        except (ValueError, KeyError, TypeError) as exc:
            servico.rejeitar(ch, method, properties, f"consulta ilegível: {exc!r}")
            return
        time.sleep(args.atraso)
        print(f"respondeu R$ {valor:.2f} (corr {properties.correlation_id})")
        ch.basic_publish(exchange="", routing_key=properties.reply_to, body=json.dumps({"valor": valor}),
                         properties=pika.BasicProperties(correlation_id=properties.correlation_id,
                                                         content_type="application/json"))
        ch.basic_ack(delivery_tag=method.delivery_tag)

    servico.consumir(connection, channel, {FILA: callback}, prefetch=args.prefetch)


if __name__ == "__main__":
    main()
