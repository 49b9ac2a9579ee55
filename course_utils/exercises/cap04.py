"""Checks for chapter 4 (Produtores). Statements: solutions/04_produtores.ipynb.

The broker-side evidence of publisher confirms and of `mandatory` is the vhost's message
statistics (`GET /api/vhosts`, which a user with the `management` tag may read for its own vhost):
`confirm` counts the acks the broker sent to publishers (nacks are not counted),
`return_unroutable` the unroutable messages returned because they were published with
`mandatory=True`, and `drop_unroutable` those dropped in silence. Checks compare them with what
`snapshot` saw before the learner's code ran.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import quote

import pika

from ..management import ManagementError
from .checks import CheckContext, Exercise, close_quietly, expect

PERSISTENT = "properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)"
COUNTERS = ("publish", "confirm", "return_unroutable", "drop_unroutable")


def _persistent(message: dict) -> bool:
    # The management API shows a message without properties as `"properties": []`.
    return (message.get("properties") or {}).get("delivery_mode") == 2


def _properties(message: dict) -> dict:
    return message.get("properties") or {}


def vhost_counters(ctx: CheckContext) -> dict[str, int]:
    """Publish counters of the check's vhost (management statistics: they lag one interval)."""
    vhost = ctx.management.vhost
    for record in ctx.management.get("vhosts"):
        if record.get("name") == vhost:
            stats = record.get("message_stats") or {}
            return {key: int(stats.get(key, 0)) for key in COUNTERS}
    return dict.fromkeys(COUNTERS, 0)


def settled_counters(ctx: CheckContext, quiet: float = 1.0, timeout: float = 4.0) -> dict[str, int]:
    """The vhost's counters once they have stopped moving for `quiet` seconds (for snapshots).

    Channel statistics reach the management database up to one statistics interval late (0.5 s
    on the course's nodes), even after the channel closed: a snapshot taken right after other
    publishing would miss them and count them later as the learner's. Waiting for a quiet second
    covers the course's nodes; on a broker with the default 5 s interval it is a best effort (the
    error it leaves can only make a delta larger)."""
    deadline = time.monotonic() + timeout
    last, since = vhost_counters(ctx), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = vhost_counters(ctx)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def _delta(now: dict, before: dict) -> dict[str, int]:
    return {key: now.get(key, 0) - before.get(key, 0) for key in COUNTERS}


WAIT_FOR_CONFIRMS = ("O BlockingChannel do pika não tem wait_for_confirms() (o código de muitos tutoriais está "
                     "errado): depois de channel.confirm_delivery(), o próprio basic_publish espera a "
                     "confirmação e levanta UnroutableError ou NackError.")


def _call(ctx: CheckContext, name: str, *args, advice: dict | None = None) -> Any:
    """ctx.call, with any exception the learner's code lets escape turned into a hint
    (`advice` maps exception classes to an extra sentence)."""
    try:
        return ctx.call(name, *args)
    except AssertionError:
        raise
    except Exception as exc:  # the learner's bug, reported as a hint
        extra = next((text for kind, text in (advice or {}).items() if isinstance(exc, kind)), "")
        if isinstance(exc, AttributeError) and "wait_for_confirms" in str(exc):
            extra = WAIT_FOR_CONFIRMS
        raise AssertionError(f"`{name}` levantou {type(exc).__name__}: {exc}. {extra}".rstrip()) from None




def _delete_exchange(ctx: CheckContext, name: str) -> None:
    ctx.management.request("DELETE", f"exchanges/{quote(ctx.management.vhost, safe='')}/{quote(name, safe='')}",
                           ok=(404,))


def _exchange_or_none(ctx: CheckContext, name: str) -> dict | None:
    try:
        return ctx.management.exchange(name)
    except ManagementError as exc:
        if exc.status == 404:
            return None
        raise


class PublicarSeguro(Exercise):
    id = "4.1"
    title = "publicar_seguro() confirma, devolve 'sem_rota' e 'recusada', e a mensagem certa chega persistente."
    points = 3
    exchange = "pagamentos"
    ok_queue = "pagamentos.aprovados"
    full_queue = "pagamentos.limitados"
    cases = [("aprovado", "pagamento 1", "confirmada"),
             ("estornado", "pagamento 2", "sem_rota"),
             ("limitado", "pagamento 3", "recusada")]
    prefill = "pagamento 0"

    def snapshot(self, ctx: CheckContext) -> None:
        self.before = settled_counters(ctx)

    def run(self, ctx: CheckContext) -> None:
        for queue in (self.ok_queue, self.full_queue):
            ctx.management.delete_queue(queue)
        connection = ctx.curso.connect()
        try:
            setup = connection.channel()
            setup.exchange_declare(exchange=self.exchange, exchange_type="direct", durable=True)
            setup.queue_declare(queue=self.ok_queue, durable=True)
            setup.queue_bind(queue=self.ok_queue, exchange=self.exchange, routing_key="aprovado")
            setup.queue_declare(queue=self.full_queue, durable=True,
                                arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
            setup.queue_bind(queue=self.full_queue, exchange=self.exchange, routing_key="limitado")
            setup.basic_publish(exchange="", routing_key=self.full_queue, body=self.prefill,
                                properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
            results = []
            for key, body, _ in self.cases:
                channel = connection.channel()  # a fresh channel, without confirms, for each call
                results.append(_call(ctx, "publicar_seguro", channel, self.exchange, key, body, advice={
                    pika.exceptions.UnroutableError: "Capture-a (try/except) e devolva 'sem_rota'.",
                    pika.exceptions.NackError: "Capture-a (try/except) e devolva 'recusada'.",
                }))
        finally:
            close_quietly(connection)
        for (key, body, wanted), got in zip(self.cases, results):
            expect(got == wanted,
                   f"publicar_seguro(channel, '{self.exchange}', '{key}', '{body}') devolveu {got!r}; "
                   f"esperava {wanted!r}. " + {
                       "confirmada": f"A fila '{self.ok_queue}' está ligada a '{self.exchange}' com a "
                                     f"chave 'aprovado': a mensagem tem destino e o broker a confirma.",
                       "sem_rota": "Nenhuma fila está ligada com a chave 'estornado'. Com mandatory=True "
                                   "e confirmações, o pika levanta pika.exceptions.UnroutableError: "
                                   "capture-a e devolva 'sem_rota'.",
                       "recusada": f"A fila '{self.full_queue}' (x-max-length=1, x-overflow="
                                   f"reject-publish) já está cheia e o broker responde com nack: o pika "
                                   f"levanta pika.exceptions.NackError; capture-a e devolva 'recusada'.",
                   }[wanted])

    def verify(self, ctx: CheckContext) -> None:
        q = ctx.queue_when(self.ok_queue, lambda q: q.get("messages", 0) >= 1)
        expect(q is not None, f"A fila '{self.ok_queue}' não existe: a verificação a cria; rode-a de novo.")
        count = q.get("messages", 0)
        expect(count != 0, f"A fila '{self.ok_queue}' está vazia: 'pagamento 1' não chegou. publicar_seguro "
                           f"deve publicar em channel.basic_publish(exchange=exchange, routing_key=routing_key, "
                           f"body=corpo, ...).")
        expect(count == 1, f"A fila '{self.ok_queue}' tem {count} mensagens; esperava só 'pagamento 1'. "
                           f"Publique cada mensagem uma vez.")
        message = ctx.management.peek(self.ok_queue, 1)[0]
        expect(message.get("payload") == "pagamento 1",
               f"A mensagem em '{self.ok_queue}' é {message.get('payload')!r}; esperava 'pagamento 1'.")
        expect(_persistent(message), f"A mensagem em '{self.ok_queue}' não é persistente: {PERSISTENT}.")
        full = ctx.queue_when(self.full_queue, lambda q: q.get("messages", 0) >= 1)
        expect(full is not None and full.get("messages", 0) == 1,
               f"A fila '{self.full_queue}' deveria continuar com 1 mensagem (a que a verificação pôs); "
               f"o broker mostra {0 if full is None else full.get('messages', 0)}.")
        # Broker-side evidence of confirms and of mandatory=True, from the vhost's statistics.
        delta = ctx.eventually(lambda: _delta(vhost_counters(ctx), self.before),
                               lambda d: d["confirm"] >= 2 and d["return_unroutable"] >= 1)
        expect(delta["confirm"] >= 2,
               f"O broker enviou {delta['confirm']} confirmação(ões) de publicação; esperava pelo menos 2 "
               f"('pagamento 1' e o ack do 'pagamento 2' devolvido). Ligue as confirmações no canal com "
               f"channel.confirm_delivery() antes de publicar: sem elas, basic_publish não sabe de nada.")
        expect(delta["return_unroutable"] >= 1,
               f"O broker não devolveu nenhuma mensagem sem rota (descartou {delta['drop_unroutable']} em "
               f"silêncio). Publique com mandatory=True: sem isso, uma mensagem que não vai a fila nenhuma "
               f"é confirmada e jogada fora.")


class EventoJson(Exercise):
    id = "4.2"
    title = "O evento viaja como JSON, com content_type, message_id, timestamp e headers, e volta como dict."
    points = 2
    queue = "eventos"
    events = [
        {"id": "evt-0001", "tipo": "pedido.criado",
         "dados": {"pedido": 1042, "cliente": "Ana Conceição", "itens": [{"sku": "CAFE-500G", "qtd": 2}],
                   "total": 59.8}},
        {"id": "evt-0002", "tipo": "pedido.pago",
         "dados": {"pedido": 1042, "forma": "pix", "valor": 59.8, "parcelas": None, "aprovado": True}},
    ]

    def run(self, ctx: CheckContext) -> None:
        ctx.management.delete_queue(self.queue)
        connection = ctx.curso.connect()
        try:
            channel = connection.channel()
            channel.queue_declare(queue=self.queue, durable=True)
            for evento in self.events:
                _call(ctx, "publicar_evento", channel, json.loads(json.dumps(evento)))
            got = _call(ctx, "ler_evento", channel)
        finally:
            close_quietly(connection)
        first = self.events[0]
        expect(not isinstance(got, (bytes, str)),
               f"ler_evento devolveu {type(got).__name__}; esperava um dict: decodifique o corpo com "
               f"json.loads(body).")
        expect(got is not None, f"ler_evento devolveu None, mas a fila '{self.queue}' tinha mensagens: "
                                f"use channel.basic_get(queue='{self.queue}', auto_ack=False).")
        expect(got == first, f"ler_evento devolveu {got!r}; esperava o primeiro evento publicado, {first!r}.")

    def verify(self, ctx: CheckContext) -> None:
        last = self.events[1]
        q = ctx.queue_when(self.queue, lambda q: q.get("messages_unacknowledged", 0) == 0
                           and q.get("messages_ready", 0) == 1
                           and q.get("message_stats", {}).get("ack", 0) >= 1)
        expect(q is not None, f"A fila '{self.queue}' não existe: a verificação a cria; rode-a de novo.")
        stats = q.get("message_stats", {})
        no_ack = stats.get("get_no_ack", 0) + stats.get("deliver_no_ack", 0)
        expect(no_ack == 0, f"{no_ack} mensagem(ns) saíram de '{self.queue}' com auto_ack=True. Em ler_evento, "
                            f"use basic_get(queue='{self.queue}', auto_ack=False) e confirme com "
                            f"channel.basic_ack(delivery_tag=method.delivery_tag) depois de decodificar.")
        ready, unacked = q.get("messages_ready", 0), q.get("messages_unacknowledged", 0)
        expect(unacked == 0, f"ler_evento deixou {unacked} mensagem(ns) sem ack em '{self.queue}'. Confirme a "
                             f"que leu com channel.basic_ack(delivery_tag=method.delivery_tag).")
        expect(ready == 1, f"A fila '{self.queue}' ficou com {ready} mensagem(ns) e o broker registrou "
                           f"{stats.get('ack', 0)} ack(s); esperava 1 mensagem (o segundo evento) e 1 ack. "
                           f"publicar_evento publica uma mensagem por evento; ler_evento tira uma da fila com "
                           f"basic_get e a confirma com basic_ack.")
        expect(stats.get("ack", 0) >= 1,
               f"O broker não registrou nenhum ack em '{self.queue}'. Em ler_evento, confirme a mensagem com "
               f"channel.basic_ack(delivery_tag=method.delivery_tag).")
        message = ctx.management.peek(self.queue, 1)[0]
        payload, props = message.get("payload", ""), _properties(message)
        if message.get("payload_encoding") == "base64":
            payload = base64.b64decode(payload).decode("utf-8", "replace")
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        expect(body is not None, f"O corpo da mensagem não é JSON válido: {payload[:80]!r}. Use "
                                 f"json.dumps(evento) (str(evento) dá aspas simples, None, True... que não são JSON).")
        expect(body == last, f"O corpo na fila decodifica para {body!r}; esperava o evento inteiro, {last!r}.")
        expect(props.get("content_type") == "application/json",
               f"content_type da mensagem é {props.get('content_type')!r}; esperava 'application/json' "
               f"(pika.BasicProperties(content_type='application/json', ...)).")
        expect(_persistent(message), f"A mensagem não é persistente: use delivery_mode="
                                     f"pika.DeliveryMode.Persistent nas BasicProperties.")
        expect(props.get("message_id") == last["id"],
               f"message_id da mensagem é {props.get('message_id')!r}; esperava o id do evento, {last['id']!r}.")
        headers = props.get("headers") or {}
        expect(headers.get("tipo") == last["tipo"],
               f"Os headers da mensagem são {headers!r}; esperava {{'tipo': {last['tipo']!r}}} "
               f"(headers={{'tipo': evento['tipo']}}).")
        timestamp = props.get("timestamp")
        expect(isinstance(timestamp, int),
               f"A mensagem não tem timestamp (o broker mostra {timestamp!r}). Use timestamp=int(time.time()).")
        expect(abs(timestamp - time.time()) < 6 * 3600,
               f"O timestamp da mensagem é {timestamp}, longe de agora ({int(time.time())}). O timestamp AMQP "
               f"é em segundos desde 1970: int(time.time()), não milissegundos.")


class SobreviverReinicio(Exercise):
    id = "4.3"
    title = "As notas fiscais sobreviveriam a um reinício e a uma queda do broker."
    points = 3
    exchange = "fiscal"
    queue = "notas_fiscais"
    key = "nota"
    notas = [{"numero": 7301, "cliente": "Padaria Pão Quente", "valor": 182.4},
             {"numero": 7302, "cliente": "Oficina São Jorge", "valor": 1250.0},
             {"numero": 7303, "cliente": "Farmácia Vida", "valor": 96.15}]

    def snapshot(self, ctx: CheckContext) -> None:
        self.before = settled_counters(ctx)

    def run(self, ctx: CheckContext) -> None:
        ctx.management.delete_queue(self.queue)
        _delete_exchange(ctx, self.exchange)
        connection = ctx.curso.connect()
        try:
            channel = connection.channel()
            _call(ctx, "registrar_notas", channel, [dict(n) for n in self.notas])
        finally:
            # The service stops: whatever lived only as long as its connection goes with it.
            close_quietly(connection)

    def verify(self, ctx: CheckContext) -> None:
        n = len(self.notas)
        exchange = _exchange_or_none(ctx, self.exchange)
        expect(exchange is not None, f"A troca '{self.exchange}' não existe. registrar_notas deve declará-la "
                                     f"(exchange_declare) antes de publicar nela.")
        expect(exchange.get("durable"),
               f"A troca '{self.exchange}' não é durável: num reinício ela some, com as ligações, e o produtor "
               f"passa a levar 404. O pika declara trocas com durable=False por padrão: passe durable=True.")
        q = ctx.queue_when(self.queue, lambda q: q.get("messages", 0) >= n)
        expect(q is not None,
               f"A fila '{self.queue}' não existe depois que a conexão da verificação fechou. Fila exclusiva "
               f"(exclusive=True) morre com a conexão que a criou — e num reinício: declare-a com durable=True.")
        expect(q.get("durable") and not q.get("exclusive") and not q.get("auto_delete"),
               f"A fila '{self.queue}' existe, mas não sobreviveria a um reinício (durable={q.get('durable')}, "
               f"exclusive={q.get('exclusive')}, auto_delete={q.get('auto_delete')}). Declare-a com durable=True, "
               f"sem exclusive nem auto_delete.")
        bound = [b for b in ctx.management.bindings()
                 if b.get("source") == self.exchange and b.get("destination") == self.queue]
        expect(any(b.get("routing_key") == self.key for b in bound),
               f"A fila '{self.queue}' não está ligada à troca '{self.exchange}' com a chave '{self.key}' "
               f"(ligações: {[b.get('routing_key') for b in bound]}).")
        count = q.get("messages", 0)
        expect(count == n, f"A fila '{self.queue}' tem {count} mensagem(ns); esperava {n}, uma por nota.")
        peeked = ctx.management.peek(self.queue, n)
        bodies = []
        for message in peeked:
            try:
                bodies.append(json.loads(message.get("payload", "")))
            except ValueError:
                bodies.append(message.get("payload"))
        expect(bodies == self.notas, f"As mensagens na fila são {bodies!r}; esperava as notas, em JSON e na "
                                     f"ordem: {self.notas!r}.")
        quorum = q.get("type") == "quorum"
        expect(quorum or all(_persistent(m) for m in peeked),
               f"A fila '{self.queue}' é clássica e as mensagens não são persistentes: num reinício elas somem "
               f"mesmo com a fila durável. Use {PERSISTENT} (ou uma fila quorum, que grava tudo em disco).")
        delta = ctx.eventually(lambda: _delta(vhost_counters(ctx), self.before), lambda d: d["confirm"] >= n)
        expect(delta["confirm"] >= n,
               f"O broker confirmou {delta['confirm']} de {n} publicações. Sem channel.confirm_delivery(), "
               f"registrar_notas volta antes de saber se as notas chegaram ao disco: uma queda nesse intervalo "
               f"as perde em silêncio. Ligue as confirmações antes de publicar.")
