"""Logística: ships each paid order, retrying the carrier with a delay.

    python -m course_utils.loja.logistica [--dados PASTA] [--preparo S] [--falhas-transportadora N]
                                          [--espera-ms MS] [--tentativas N]

Consumes `pagamento.aprovado` from its queue `logistica.pagamentos` (dead letters in
`logistica.pagamentos.dlq`). For each order it calls the carrier (simulated), then publishes
`logistica.em_preparo` and, `--preparo` s later, `logistica.enviado` with the tracking code, both
with the order's correlation id.

State in `<dados>/logistica.db`: `envios(pedido_id, codigo_rastreio)` and the INBOX
`inbox(message_id)`, written in one transaction after the carrier accepted: a message seen
before is acked and skipped, and an order is shipped once.

Retries with a delay, built from TTL + dead-lettering (chapter 7): `--falhas-transportadora N`
makes the carrier fail the first N attempts of each order. A failed attempt publishes the message
(same body, same properties, plus the application header `x-tentativas` = failed attempts so
far: from RabbitMQ 4.0 the broker no longer interprets an `x-death` a client republishes, so the
count is the service's own) to the durable wait queue `logistica.pagamentos.espera`, which has
no consumer, `x-message-ttl` = `--espera-ms` and dead-letters expired messages back to
`logistica.pagamentos` through the default exchange; the copy is confirmed by the broker before
the original is acked. After `--tentativas` failed attempts the message is rejected with
requeue=False: to `logistica.pagamentos.dlq`.
"""
from __future__ import annotations

import copy
import sqlite3
import time
import zlib

import pika

from . import servico

FILA = "logistica.pagamentos"
ESPERA = FILA + ".espera"
CHAVE = "pagamento.aprovado"  # what the queue holds, whatever routing key brought it back
TENTATIVAS = "x-tentativas"  # the application's count of failed attempts
ESQUEMA = """
CREATE TABLE IF NOT EXISTS envios (pedido_id TEXT PRIMARY KEY, codigo_rastreio TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (message_id TEXT PRIMARY KEY, recebida_em REAL NOT NULL);
"""


class TransportadoraFalhou(Exception):
    pass


def transportadora(pedido_id: str, tentativa: int, falhas: int) -> str:
    """The carrier (simulated): fails the first `falhas` attempts, then returns a tracking code."""
    if tentativa <= falhas:
        raise TransportadoraFalhou(f"transportadora fora do ar (--falhas-transportadora {falhas})")
    return f"LG{zlib.crc32(pedido_id.encode()) % 10**9:09d}BR"


def declarar_espera(connection, ttl_ms: int) -> None:
    """The wait queue: no consumer, messages expire after `ttl_ms` and go back to FILA. A queue's
    arguments cannot change: if it exists with another TTL (a restart with another --espera-ms),
    it is recreated when empty; with messages waiting in it, the service stops and says why."""
    argumentos = {"x-message-ttl": ttl_ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": FILA}
    canal = connection.channel()
    try:
        canal.queue_declare(queue=ESPERA, durable=True, arguments=argumentos)
    except pika.exceptions.ChannelClosedByBroker:  # 406 PRECONDITION_FAILED: other arguments
        canal = connection.channel()
        esperando = canal.queue_declare(queue=ESPERA, passive=True).method.message_count
        if esperando:
            raise SystemExit(f"{ESPERA} já existe com outro TTL e tem {esperando} mensagens esperando: "
                             f"rode com o --espera-ms de antes ou esvazie a fila")
        canal.queue_delete(queue=ESPERA)
        canal.queue_declare(queue=ESPERA, durable=True, arguments=argumentos)
        print(f"{ESPERA} recriada com x-message-ttl = {ttl_ms} ms")
    canal.close()


def segundos(ms: int) -> str:
    return f"{ms / 1000:.1f}".replace(".", ",")


def main() -> None:
    args = servico.opcoes(__doc__, preparo=(float, 0.0, "segundos entre em_preparo e enviado"),
                          falhas_transportadora=(int, 0, "a transportadora falha as N primeiras tentativas de cada pedido"),
                          espera_ms=(int, 1000, "espera entre tentativas (TTL da fila de espera), em ms"),
                          tentativas=(int, 3, "tentativas antes de desistir (-> dlq)")).parse_args()
    db = servico.banco(args.dados, "logistica", ESQUEMA)
    falhas = servico.Falhas(args.falhar_vezes)
    connection, channel = servico.conectar()
    servico.declarar_fila(channel, FILA, [CHAVE])
    declarar_espera(connection, args.espera_ms)
    espera = connection.channel()  # the retry copies go out with confirms, before the original's ack
    espera.confirm_delivery()

    def callback(ch, method, properties, body):
        corr = properties.correlation_id
        pagamento, motivo = servico.ler(method, properties, body, chave=CHAVE)
        if pagamento is None:
            servico.rejeitar(ch, method, properties, motivo)
            return
        headers = properties.headers or {}
        tentativa = int(headers.get(TENTATIVAS, 0)) + 1
        de = f" (tentativa {tentativa} de {args.tentativas})" if tentativa > 1 else ""
        print(f"recebeu {CHAVE}{de} (corr {corr})")
        time.sleep(args.atraso)
        try:
            falhas.tentar()
        except RuntimeError as exc:
            print(f"falhou: {exc}; devolvida à fila (corr {corr})")
            ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)
            return
        pedido_id = pagamento["pedido_id"]
        if db.execute("SELECT 1 FROM inbox WHERE message_id = ?", (properties.message_id,)).fetchone():
            print(f"duplicada ignorada: message_id {properties.message_id[:8]} (corr {corr})")
            ch.basic_ack(delivery_tag=method.delivery_tag)
            return
        try:
            codigo = transportadora(pedido_id, tentativa, args.falhas_transportadora)
        except TransportadoraFalhou:
            if tentativa >= args.tentativas:
                print(f"transportadora falhou (tentativa {tentativa} de {args.tentativas}); desistiu: "
                      f"rejeitada -> dlq (corr {corr})")
                ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
                return
            copia = copy.copy(properties)
            copia.headers = {**headers, TENTATIVAS: tentativa}
            espera.basic_publish(exchange="", routing_key=ESPERA, body=body, properties=copia)  # waits for the confirm
            print(f"transportadora falhou (tentativa {tentativa} de {args.tentativas}); "
                  f"nova tentativa em {segundos(args.espera_ms)} s (corr {corr})")
            ch.basic_ack(delivery_tag=method.delivery_tag)
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO inbox VALUES (?, ?)", (properties.message_id, time.time()))
            novo = db.execute("INSERT OR IGNORE INTO envios VALUES (?, ?)", (pedido_id, codigo)).rowcount == 1
            db.execute("COMMIT")
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK")
            print(f"duplicada ignorada: message_id {properties.message_id[:8]} (corr {corr})")
            ch.basic_ack(delivery_tag=method.delivery_tag)
            return
        if not novo:
            print(f"pedido {pedido_id} já enviado: nada a fazer (corr {corr})")
            ch.basic_ack(delivery_tag=method.delivery_tag)
            return
        print(f"pedido {pedido_id}: transportadora aceitou, rastreio {codigo} (corr {corr})")
        servico.publicar(ch, "logistica.em_preparo", {"versao": 1, "pedido_id": pedido_id}, corr)
        time.sleep(args.preparo)
        servico.publicar(ch, "logistica.enviado", {"versao": 1, "pedido_id": pedido_id, "codigo_rastreio": codigo}, corr)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    servico.consumir(connection, channel, {FILA: callback}, prefetch=args.prefetch)


if __name__ == "__main__":
    main()
