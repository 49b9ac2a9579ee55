"""What every shop service does the same way (chapters 10 and 13): connect, declare its queue,
publish an event, consume until SIGTERM.

    from course_utils.loja import servico
    connection, channel = servico.conectar()
    servico.declarar_fila(channel, "estoque.pedidos", ["pedido.criado"])
    servico.publicar(channel, "estoque.reservado", corpo, correlation_id="p-1")
    servico.consumir(connection, channel, {"estoque.pedidos": callback})   # prints "pronto"

Topology convention: every event goes to the topic exchange `loja.eventos`; each consuming
service has ONE durable queue `<servico>.<o-que>` bound to the keys it cares about, declared with
`x-dead-letter-exchange = loja.dlx` (direct) and `x-dead-letter-routing-key = <queue>`; the
dead-letter queue `<queue>.dlq` is bound to `loja.dlx` with the key `<queue>`. A message a
service cannot read (not JSON, wrong schema, unknown version) is rejected with requeue=False and
lands in its `.dlq`: never lost, never requeued forever.

Options every service takes (argument, or environment variable):
  --dados PASTA      (LOJA_DADOS, default ".")   where its SQLite file lives
  --atraso S         (LOJA_ATRASO, default 0)    seconds of "work" per message
  --falhar-vezes N   (LOJA_FALHAR_VEZES, 0)      the first N messages fail (nack, requeued)
  --prefetch N       (LOJA_PREFETCH, 1)          basic_qos prefetch_count
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import pika

from .contratos import CHAVES, EXCHANGE, erros

DLX = "loja.dlx"
NOME = os.environ.get("CURSO_WORKER", "servico")  # the name Background gave the process


def opcoes(descricao: str, **extras) -> argparse.ArgumentParser:
    """The common options; `extras` adds service-specific ones: name=(type, default, help), where
    the type `bool` makes a flag (`--compensar`: False unless given)."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description=descricao)
    parser.add_argument("--dados", default=env("LOJA_DADOS", "."), help="pasta do banco SQLite")
    parser.add_argument("--atraso", type=float, default=float(env("LOJA_ATRASO", "0")))
    parser.add_argument("--falhar-vezes", type=int, default=int(env("LOJA_FALHAR_VEZES", "0")))
    parser.add_argument("--prefetch", type=int, default=int(env("LOJA_PREFETCH", "1")))
    for nome, (tipo, padrao, ajuda) in extras.items():
        if tipo is bool:  # a flag: present or not
            parser.add_argument("--" + nome.replace("_", "-"), action="store_true", help=ajuda)
        else:
            parser.add_argument("--" + nome.replace("_", "-"), type=tipo, default=padrao, help=ajuda)
    return parser


def banco(pasta: str, nome: str, esquema: str) -> sqlite3.Connection:
    """The service's SQLite file `<pasta>/<nome>.db`, with its tables created if missing."""
    Path(pasta).mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(Path(pasta) / f"{nome}.db", timeout=10, isolation_level=None)
    limite = time.monotonic() + 10
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(esquema)
            return db
        except sqlite3.OperationalError as exc:
            # Two processes opening a new file at once (Pedidos and its relay, competing workers):
            # SQLite may answer "database is locked" at once, without waiting its busy timeout, to
            # the one that loses the switch to WAL (about 1 start in 25 here). Try again.
            if "locked" not in str(exc) or time.monotonic() > limite:
                raise
            time.sleep(0.05)


def conectar(url: str | None = None):
    """A connection and a channel, with the event exchange declared."""
    url = url or os.environ.get("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/%2F")
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": NOME}  # the name the management UI shows
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="topic", durable=True)
    erros("pedido.criado", {})  # imports jsonschema now, not at the first message (~1 s)
    return connection, channel


def declarar_fila(channel, fila: str, chaves: list[str]) -> None:
    """The service's durable queue bound to `chaves`, and its dead-letter queue `<fila>.dlq`."""
    channel.exchange_declare(exchange=DLX, exchange_type="direct", durable=True)
    channel.queue_declare(queue=f"{fila}.dlq", durable=True)
    channel.queue_bind(queue=f"{fila}.dlq", exchange=DLX, routing_key=fila)
    channel.queue_declare(queue=fila, durable=True, arguments={
        "x-dead-letter-exchange": DLX, "x-dead-letter-routing-key": fila})
    for chave in chaves:
        channel.queue_bind(queue=fila, exchange=EXCHANGE, routing_key=chave)


def propriedades(chave: str, correlation_id: str, message_id: str | None = None) -> pika.BasicProperties:
    """The convention: persistent JSON, `type` = the event's name, a new `message_id`, the order's id."""
    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
                                type=CHAVES[chave], message_id=message_id or str(uuid.uuid4()),
                                correlation_id=correlation_id)


def publicar(channel, chave: str, corpo: dict, correlation_id: str, message_id: str | None = None) -> None:
    """Publish the event `chave` (checked against its contract first) and log it."""
    problemas = erros(chave, corpo)
    if problemas:
        raise ValueError(f"evento {chave} fora do contrato: {problemas}")
    channel.basic_publish(exchange=EXCHANGE, routing_key=chave, body=json.dumps(corpo),
                          properties=propriedades(chave, correlation_id, message_id))
    print(f"publicou {chave} (corr {correlation_id})")


def ler(method, properties, body, chave: str | None = None):
    """The decoded body if it follows the contract of its routing key (or of `chave`, for a queue
    whose messages come back from a wait queue under another routing key), else (None, why)."""
    try:
        corpo = json.loads(body)
    except ValueError:
        return None, "não é JSON"
    problemas = erros(chave or method.routing_key, corpo)
    return (None, "; ".join(problemas)) if problemas else (corpo, "")


def rejeitar(ch, method, properties, motivo: str) -> None:
    """Dead-letter a message this service cannot read (requeue=False: to `<fila>.dlq`)."""
    ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
    print(f"rejeitou {method.routing_key} -> dlq: {motivo} (corr {properties.correlation_id})")


class Falhas:
    """Failure injection: the first `vezes` calls of `tentar()` raise."""

    def __init__(self, vezes: int) -> None:
        self.restantes = vezes

    def tentar(self) -> None:
        if self.restantes > 0:
            self.restantes -= 1
            raise RuntimeError("falha injetada (--falhar-vezes)")


def consumir(connection, channel, callbacks: dict, prefetch: int = 1, intervalo: float = 0.3) -> None:
    """Consume `callbacks` ({fila: callback}) with manual acks until SIGTERM (or SIGINT), checking
    every `intervalo` s; print "pronto" once consuming, "parado" at the end."""
    parar = []
    signal.signal(signal.SIGTERM, lambda *_: parar.append(True))
    signal.signal(signal.SIGINT, lambda *_: parar.append(True))
    channel.basic_qos(prefetch_count=prefetch)
    for fila, callback in callbacks.items():
        channel.basic_consume(queue=fila, on_message_callback=callback)
    print("pronto", flush=True)
    while not parar:
        connection.process_data_events(time_limit=intervalo)
    channel.stop_consuming()
    connection.close()
    print("parado", flush=True)
