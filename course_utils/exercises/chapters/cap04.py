"""Checks for chapter 4 (Produtores). Statements: solutions/04_produtores.ipynb.

Where the facts come from, exact first:
- In the kernel, each check hands the learner a channel whose public methods it observes
  (`_observe_channel`): whether `confirm_delivery()` ran before a publish, the arguments of each
  `basic_publish` (`mandatory`, properties, exchange and key), each `basic_get` (`auto_ack`) and
  `basic_ack`. Exact, no statistics.
- On the broker, exact: ready counts from a passive declare after the check's connection closed
  (unacked messages are back in the queue by then), the messages' bodies and properties (peek),
  and the definitions (exchanges, queues, bindings).
- The grader (outside the kernel) has only the broker. Publisher confirms and `mandatory` leave no
  trace but statistics: the vhost's `confirm` (acks sent to publishers; nacks are not counted) and
  `return_unroutable` / `drop_unroutable`. They are read only when the exact checks have passed,
  as deltas from the grader's snapshot in a window that cannot race: the grader's vhost is fresh
  and these counters only grow when the answer is right, and a wrong answer is judged only once the
  `publish_in` of the exchange the check just created shows every publish (collected in the same
  pass as the confirm and return counters of the same channel rows).
"""
from __future__ import annotations

import json
import time
from typing import Any

import pika
import pika.exceptions

from .. import kit, phrases
from ..checks import CheckContext, Exercise, close_quietly, expect

COUNTERS = ("confirm", "return_unroutable", "drop_unroutable")

WAIT_FOR_CONFIRMS = ("O BlockingChannel do pika não tem wait_for_confirms() (o código de muitos tutoriais está "
                     "errado): depois de channel.confirm_delivery(), o próprio basic_publish espera a "
                     "confirmação e levanta UnroutableError ou NackError.")

PUBLISH_OUTCOMES = {
    pika.exceptions.UnroutableError: ("Essa exceção é o basic_publish dizendo que a mensagem não tinha rota (o "
                                      "broker a devolveu): capture-a (try/except) e devolva 'sem_rota'."),
    pika.exceptions.NackError: ("Essa exceção é o basic_publish dizendo que o broker recusou a mensagem (nack): "
                                "capture-a (try/except) e devolva 'recusada'."),
}


def publish_advice(exc: BaseException) -> str | None:
    """The chapter's extra sentence for an exception a publisher let escape."""
    if isinstance(exc, AttributeError) and "wait_for_confirms" in str(exc):
        return WAIT_FOR_CONFIRMS
    return next((text for kind, text in PUBLISH_OUTCOMES.items() if isinstance(exc, kind)), None)


# --- chapter helpers ------------------------------------------------------------------------------

def _as_bytes(body: Any) -> Any:
    return body.encode("utf-8") if isinstance(body, str) else body


def _vhost_counters(ctx: CheckContext) -> dict[str, int]:
    """The vhost's publisher counters (management statistics: they lag)."""
    counters = kit.stats(ctx.management.vhost_record())
    return {key: int(counters.get(key, 0)) for key in COUNTERS}


def _publisher_stats(ctx: CheckContext, exchange: str, before: dict[str, int]) -> tuple[int, dict[str, int]]:
    """(publish_in of `exchange`, the vhost's publisher counters since `before`). The exchange is
    read first: whatever pass it shows, the vhost read after it has seen too."""
    published = int(kit.stats(ctx.management.exchange_or_none(exchange)).get("publish_in", 0))
    now = _vhost_counters(ctx)
    return published, {key: now[key] - before.get(key, 0) for key in COUNTERS}


# --- 4.1 -------------------------------------------------------------------------------------------

class PublicarSeguro(Exercise):
    id = "4.1"
    title = ("publicar_seguro() liga as confirmações, publica com mandatory e persistente, e devolve "
             "'confirmada', 'sem_rota' e 'recusada'.")
    points = 3
    exchange = "pagamentos"
    ok_queue = "pagamentos.aprovados"
    full_queue = "pagamentos.limitados"
    late_queue = "pagamentos.estornados"  # bound to 'estornado' only before the last call
    full_arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
    prefill = "pagamento 0"
    # (routing key, body, expected result, bind late_queue to the key first)
    cases = [("aprovado", "pagamento 1", "confirmada", False),
             ("estornado", "pagamento 2", "sem_rota", False),
             ("limitado", "pagamento 3", "recusada", False),
             ("estornado", "pagamento 4", "confirmada", True)]
    min_confirms = 3  # 'pagamento 1', 'pagamento 2' (returned, then acked), 'pagamento 4'

    def snapshot(self, ctx: CheckContext) -> None:
        if ctx.namespace is None:  # the grader: the only side that reads statistics
            self.before = _vhost_counters(ctx)

    def _why(self, key: str, expected: str) -> str:
        if expected == "sem_rota":
            return ("Nenhuma fila está ligada com a chave 'estornado'. Com mandatory=True e confirmações, o "
                    "pika levanta pika.exceptions.UnroutableError: capture-a e devolva 'sem_rota'.")
        if expected == "recusada":
            return (f"A fila '{self.full_queue}' (x-max-length=1, x-overflow=reject-publish) já está cheia e o "
                    f"broker responde com nack: o pika levanta pika.exceptions.NackError; capture-a e devolva "
                    f"'recusada'.")
        if key == "estornado":
            return (f"Desta vez a fila '{self.late_queue}' está ligada à chave 'estornado': a mensagem tem "
                    f"destino e o broker a confirma. O resultado vem do que o broker respondeu, não da "
                    f"routing key.")
        return (f"A fila '{self.ok_queue}' está ligada a '{self.exchange}' com a chave 'aprovado': a mensagem "
                f"tem destino e o broker a confirma.")

    def _check_publish(self, log: kit.ChannelLog, call: str, key: str, body: str) -> None:
        expect(log.publishes,
               f"{call} não publicou nada no canal que recebeu. Publique com channel.basic_publish(exchange="
               f"exchange, routing_key=routing_key, body=corpo, ...) no próprio `channel` e devolva o que o "
               f"broker respondeu.")
        for sent in log.publishes:
            expect((sent["exchange"], sent["routing_key"], _as_bytes(sent["body"])) == (self.exchange, key, body.encode()),
                   f"{call} publicou em exchange={sent['exchange']!r}, routing_key={sent['routing_key']!r} o "
                   f"corpo {sent['body']!r}; esperava os argumentos que recebeu: exchange={self.exchange!r}, "
                   f"routing_key={key!r}, body={body!r}.")
            expect(sent["confirming"],
                   f"{call} publicou sem ligar as confirmações de publicação: o canal chega sem elas. Chame "
                   f"channel.confirm_delivery() antes de channel.basic_publish(...): só então basic_publish "
                   f"espera o broker e levanta UnroutableError ou NackError.")
            expect(sent["mandatory"],
                   f"{call} publicou sem mandatory=True: uma mensagem que não vai a fila nenhuma é confirmada "
                   f"e jogada fora em silêncio. Passe mandatory=True em basic_publish.")
            expect(kit.persistent_properties(sent["properties"]),
                   f"{call} publicou uma mensagem que não é persistente: {phrases.PERSISTENT}.")

    def run(self, ctx: CheckContext) -> None:
        kit.reset_topology(ctx, exchanges=[self.exchange], queues=[self.ok_queue, self.full_queue, self.late_queue])
        connection = ctx.curso.connect()
        try:
            setup = connection.channel()
            setup.exchange_declare(exchange=self.exchange, exchange_type="direct", durable=True)
            setup.queue_declare(queue=self.ok_queue, durable=True)
            setup.queue_bind(queue=self.ok_queue, exchange=self.exchange, routing_key="aprovado")
            kit.fresh_queue(ctx, self.full_queue, [self.prefill], arguments=self.full_arguments, channel=setup)
            setup.queue_bind(queue=self.full_queue, exchange=self.exchange, routing_key="limitado")
            # One case at a time, stopping at the first fault: the broker then keeps what the
            # calls up to it did, and an answer that failed early leaves a trace the grader sees.
            for key, body, expected, bind_first in self.cases:
                if bind_first:
                    setup.queue_declare(queue=self.late_queue, durable=True)
                    setup.queue_bind(queue=self.late_queue, exchange=self.exchange, routing_key=key)
                channel = connection.channel()  # a fresh channel, without confirms, for each call
                log = kit.observe_channel(channel)
                call = f"publicar_seguro(channel, '{self.exchange}', '{key}', '{body}')"
                got = ctx.call("publicar_seguro", channel, self.exchange, key, body, advice=publish_advice)
                self._check_publish(log, call, key, body)
                expect(got == expected, f"{call} devolveu {got!r}; esperava {expected!r}. {self._why(key, expected)}")
        finally:
            close_quietly(connection)

    def _expect_only(self, ctx: CheckContext, queue: str, body: str, key: str) -> None:
        ready, _ = kit.counts_of(ctx, queue)
        expect(ready != 0, f"A fila '{queue}' está vazia: '{body}' não chegou. publicar_seguro deve publicar com "
                           f"channel.basic_publish(exchange=exchange, routing_key=routing_key, body=corpo, ...) "
                           f"(a chave '{key}' leva a essa fila).")
        expect(ready == 1, f"A fila '{queue}' tem {ready} mensagens; esperava só '{body}'. Publique cada mensagem "
                           f"uma vez.")
        message = kit.peek_one(ctx, queue)
        expect(kit.payload_text(message) == body,
               f"A mensagem em '{queue}' é {kit.payload_text(message)!r}; esperava {body!r}.")
        expect(kit.is_persistent(message), f"A mensagem em '{queue}' não é persistente: {phrases.PERSISTENT}.")

    def verify(self, ctx: CheckContext) -> None:
        self._expect_only(ctx, self.ok_queue, "pagamento 1", "aprovado")
        self._expect_only(ctx, self.late_queue, "pagamento 4", "estornado")
        full = kit.exact_counts(ctx, self.full_queue)
        expect(full is not None and full[0] == 1,
               f"A fila '{self.full_queue}' deveria continuar só com a mensagem que a verificação pôs; o broker "
               f"mostra {0 if full is None else full[0]}.")
        if ctx.namespace is not None:
            return  # in the kernel, run() saw confirm_delivery() and mandatory=True on each channel
        published_all = len(self.cases)
        published, delta = kit.settled(
            ctx, lambda: _publisher_stats(ctx, self.exchange, self.before),
            done=lambda v: v[0] >= published_all and v[1]["confirm"] >= self.min_confirms
            and v[1]["return_unroutable"] >= 1,
            collected=lambda v: v[0] >= published_all)
        expect(delta["confirm"] >= self.min_confirms,
               f"O broker enviou {delta['confirm']} confirmação(ões) de publicação; esperava pelo menos "
               f"{self.min_confirms} ('pagamento 1', 'pagamento 2' devolvido e 'pagamento 4'). Ligue as "
               f"confirmações no canal com channel.confirm_delivery() antes de publicar. {phrases.STATS_MAY_LAG}")
        expect(delta["return_unroutable"] >= 1,
               f"O broker não devolveu nenhuma mensagem sem rota (descartou {delta['drop_unroutable']} em "
               f"silêncio). Publique com mandatory=True: sem isso, uma mensagem que não vai a fila nenhuma é "
               f"confirmada e jogada fora. {phrases.STATS_MAY_LAG}")


# --- 4.2 -------------------------------------------------------------------------------------------

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
    clock_slack = 60  # seconds: the timestamp is the instant of publication, as int(time.time())
    @staticmethod
    def timestamp_advice(exc: BaseException) -> str | None:
        if isinstance(exc, Exception) and "not an integer" in str(exc):
            return ("O pika só aceita inteiros nas propriedades numéricas: o timestamp AMQP é um inteiro "
                    "de segundos, timestamp=int(time.time()) (time.time() é um float).")
        return None

    empty_advice = ("Com a fila vazia, basic_get devolve (None, None, None): nesse caso ler_evento deve "
                    "devolver None (if method is None: return None).")

    def snapshot(self, ctx: CheckContext) -> None:
        self.started = time.time()

    def run(self, ctx: CheckContext) -> None:
        connection = ctx.curso.connect()
        try:
            channel = connection.channel()
            kit.fresh_queue(ctx, self.queue, channel=channel)
            log = kit.observe_channel(channel)
            # The empty queue first; a fault there is told last (after the checks of the events
            # themselves), unless it broke the channel the rest needs.
            self.empty_fault = None
            try:
                empty = ctx.call("ler_evento", channel,
                                 advice={TypeError: self.empty_advice, AttributeError: self.empty_advice})
                expect(empty is None, f"Com a fila '{self.queue}' vazia, ler_evento devolveu {empty!r}; "
                                      f"esperava None. {self.empty_advice}")
            except AssertionError as exc:
                if not channel.is_open:
                    raise
                self.empty_fault = str(exc)
            for evento in self.events:
                ctx.call("publicar_evento", channel, json.loads(json.dumps(evento)), advice=self.timestamp_advice)
            mark = log.mark()
            got = ctx.call("ler_evento", channel)
            _, gets, acks = log.since(mark)
        finally:
            # Closing the connection returns whatever ler_evento took without an ack: only then do
            # the exact ready counts show what it consumed.
            close_quietly(connection)
        first = self.events[0]
        expect(not isinstance(got, (bytes, str)),
               f"ler_evento devolveu {type(got).__name__}; esperava um dict: decodifique o corpo com "
               f"json.loads(body).")
        expect(got is not None, f"ler_evento devolveu None, mas a fila '{self.queue}' tinha mensagens: "
                                f"use channel.basic_get(queue='{self.queue}', auto_ack=False).")
        expect(got == first, f"ler_evento devolveu {got!r}; esperava o primeiro evento publicado, {first!r}.")
        taken = [g for g in gets if g.get("method") is not None]
        expect(taken, f"ler_evento devolveu o evento sem tirá-lo da fila: pegue a mensagem com "
                      f"channel.basic_get(queue='{self.queue}', auto_ack=False) no canal que recebeu.")
        expect(not any(g["auto_ack"] for g in taken),
               f"ler_evento pegou a mensagem com auto_ack=True: o broker a apaga ao entregar, e ela se perde se "
               f"o programa cair antes de processá-la. Use basic_get(queue='{self.queue}', auto_ack=False) e "
               f"confirme com channel.basic_ack(delivery_tag=method.delivery_tag) depois de decodificar.")
        expect(acks, "ler_evento não confirmou a mensagem que pegou: sem ack, ela volta para a fila quando a "
                     "conexão fecha. Confirme com channel.basic_ack(delivery_tag=method.delivery_tag).")

    def verify(self, ctx: CheckContext) -> None:
        last = self.events[1]
        ready, _ = kit.counts_of(ctx, self.queue)
        expect(ready != len(self.events),
               f"A fila '{self.queue}' ficou com as {ready} mensagens depois que a conexão fechou: a que "
               f"ler_evento pegou voltou para a fila, porque ninguém a confirmou. Em ler_evento, pegue-a com "
               f"basic_get(queue='{self.queue}', auto_ack=False) e confirme com "
               f"channel.basic_ack(delivery_tag=method.delivery_tag).")
        expect(ready == 1, f"A fila '{self.queue}' ficou com {ready} mensagem(ns); esperava 1 (o segundo evento). "
                           f"publicar_evento publica uma mensagem por evento; ler_evento tira uma só da fila e a "
                           f"confirma.")
        message = kit.peek_one(ctx, self.queue)
        payload, props = kit.payload_text(message), message.get("properties") or {}
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
        expect(kit.is_persistent(message), "A mensagem não é persistente: use delivery_mode="
                                           "pika.DeliveryMode.Persistent nas BasicProperties.")
        expect(props.get("message_id") == last["id"],
               f"message_id da mensagem é {props.get('message_id')!r}; esperava o id do evento, {last['id']!r}.")
        headers = props.get("headers") or {}
        expect(headers.get("tipo") == last["tipo"],
               f"Os headers da mensagem são {headers!r}; esperava {{'tipo': {last['tipo']!r}}} "
               f"(headers={{'tipo': evento['tipo']}}).")
        timestamp = props.get("timestamp")
        expect(isinstance(timestamp, int),
               f"A mensagem não tem timestamp (o broker mostra {timestamp!r}). Use timestamp=int(time.time()).")
        now = time.time()
        expect(timestamp < 10 ** 11,
               f"O timestamp da mensagem é {timestamp}: parece estar em milissegundos. O timestamp AMQP é em "
               f"segundos desde 1970: int(time.time()).")
        expect(self.started - self.clock_slack <= timestamp <= now + self.clock_slack,
               f"O timestamp da mensagem é {timestamp}, {abs(int(now) - timestamp)} s longe do instante da "
               f"publicação ({int(now)}). Use timestamp=int(time.time()) ao publicar (datetime.utcnow()."
               f"timestamp() erra pelo fuso horário).")
        if ctx.namespace is not None:
            # In the kernel, run() saw the basic_get (auto_ack) and the basic_ack; what is left is
            # how ler_evento met the empty queue.
            expect(self.empty_fault is None, self.empty_fault)
            return
        # The grader: only statistics tell auto_ack from a manual ack. Once either shows, it is final
        # (a second get would have left no message in the queue); a peek counts as neither.
        q = ctx.eventually(lambda: kit.stats(ctx.queue(self.queue)),
                           lambda s: s.get("ack", 0) + s.get("get_no_ack", 0) + s.get("deliver_no_ack", 0) >= 1)
        no_ack = q.get("get_no_ack", 0) + q.get("deliver_no_ack", 0)
        expect(no_ack == 0, f"{no_ack} mensagem(ns) saíram de '{self.queue}' com auto_ack=True. Em ler_evento, use "
                            f"basic_get(queue='{self.queue}', auto_ack=False) e confirme com "
                            f"channel.basic_ack(delivery_tag=method.delivery_tag) depois de decodificar.")
        expect(q.get("ack", 0) >= 1,
               f"O broker não registrou nenhum ack em '{self.queue}'. Em ler_evento, confirme a mensagem com "
               f"channel.basic_ack(delivery_tag=method.delivery_tag). {phrases.STATS_MAY_LAG}")


# --- 4.3 -------------------------------------------------------------------------------------------

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
        if ctx.namespace is None:  # the grader: the only side that reads statistics
            self.before = _vhost_counters(ctx)

    def run(self, ctx: CheckContext) -> None:
        kit.reset_topology(ctx, exchanges=[self.exchange], queues=[self.queue])
        connection = ctx.curso.connect()
        try:
            channel = connection.channel()
            self.log = kit.observe_channel(channel)
            ctx.call("registrar_notas", channel, [dict(n) for n in self.notas], advice={
                pika.exceptions.UnroutableError: (
                    f"Com confirmações e mandatory=True, o broker devolveu uma nota que não chegou a fila "
                    f"nenhuma: a fila '{self.queue}' precisa estar ligada à exchange '{self.exchange}' com a chave "
                    f"'{self.key}' (queue_bind) antes do primeiro basic_publish."),
            })
        finally:
            # The service stops: whatever lived only as long as its connection goes with it.
            close_quietly(connection)

    def verify(self, ctx: CheckContext) -> None:
        n = len(self.notas)
        exchange = ctx.management.exchange_or_none(self.exchange)
        expect(exchange is not None, f"A exchange '{self.exchange}' não existe. registrar_notas deve declará-la "
                                     f"(exchange_declare) antes de publicar nela.")
        expect(exchange.get("durable"),
               f"A exchange '{self.exchange}' não é durável: num reinício ela some, com os bindings, e o produtor "
               f"passa a levar 404. O pika declara exchanges com durable=False por padrão: passe durable=True.")
        expect(exchange.get("type") == "direct",
               f"A exchange '{self.exchange}' é do tipo {exchange.get('type')!r}; o enunciado pede uma exchange direct: "
               f"exchange_type='direct'.")
        counts = kit.exact_counts(ctx, self.queue)
        expect(counts is not None,
               f"A fila '{self.queue}' não existe depois que a conexão da verificação fechou. Fila exclusiva "
               f"(exclusive=True) morre com a conexão que a criou — e num reinício: declare-a com durable=True.")
        q = ctx.queue(self.queue) or {}
        expect(q.get("durable") and not q.get("exclusive") and not q.get("auto_delete"),
               f"A fila '{self.queue}' existe, mas não sobreviveria a um reinício (durable={q.get('durable')}, "
               f"exclusive={q.get('exclusive')}, auto_delete={q.get('auto_delete')}). Declare-a com durable=True, "
               f"sem exclusive nem auto_delete.")
        expiring = {k: v for k, v in (q.get("arguments") or {}).items() if k in ("x-message-ttl", "x-expires")}
        expect(not expiring,
               f"A fila '{self.queue}' foi declarada com {expiring}: as notas (ou a própria fila) somem sozinhas "
               f"depois desse prazo, com ou sem reinício. A garantia é que toda nota continue no broker: tire "
               f"x-message-ttl / x-expires.")
        bound = [b for b in kit.bindings_from(ctx, self.exchange) if b.get("destination") == self.queue]
        expect(any(b.get("routing_key") == self.key for b in bound),
               f"A fila '{self.queue}' não está ligada à exchange '{self.exchange}' com a chave '{self.key}' "
               f"(bindings: {[b.get('routing_key') for b in bound]}).")
        count = counts[0]
        expect(count == n, f"A fila '{self.queue}' tem {count} mensagem(ns); esperava {n}, uma por nota.")
        peeked = ctx.management.peek(self.queue, n)
        bodies = []
        for message in peeked:
            try:
                bodies.append(json.loads(kit.payload_text(message)))
            except ValueError:
                bodies.append(kit.payload_text(message))
        expect(bodies == self.notas, f"As mensagens na fila são {bodies!r}; esperava as notas, em JSON e na "
                                     f"ordem: {self.notas!r}.")
        expires = sorted({(m.get("properties") or {}).get("expiration") for m in peeked} - {None})
        expect(not expires,
               f"As notas foram publicadas com expiration={(expires or [''])[0]!r} (ms): elas somem sozinhas depois desse "
               f"prazo, com ou sem reinício. Publique sem expiration.")
        quorum = q.get("type") == "quorum"
        expect(quorum or all(kit.is_persistent(m) for m in peeked),
               f"A fila '{self.queue}' é clássica e as mensagens não são persistentes: num reinício elas somem "
               f"mesmo com a fila durável: {phrases.PERSISTENT} (ou uma fila quorum, que grava tudo em disco).")
        no_confirms = ("Sem channel.confirm_delivery() antes de publicar, registrar_notas volta antes de saber "
                       "se as notas chegaram ao disco: uma queda nesse intervalo as perde em silêncio.")
        elsewhere = (f"Publique as notas na exchange '{self.exchange}' com a chave '{self.key}' (é ela que as leva à "
                     f"fila e que o serviço usa): channel.basic_publish(exchange='{self.exchange}', "
                     f"routing_key='{self.key}', ...).")
        if ctx.namespace is not None:  # in the kernel: what registrar_notas did with its channel
            publishes = self.log.publishes
            expect(all(p["confirming"] for p in publishes),
                   f"registrar_notas publicou {sum(not p['confirming'] for p in publishes)} nota(s) sem as "
                   f"confirmações ligadas. {no_confirms} Chame channel.confirm_delivery() uma vez, "
                   f"antes do primeiro basic_publish.")
            expect(all((p["exchange"], p["routing_key"]) == (self.exchange, self.key) for p in publishes),
                   f"registrar_notas publicou em {sorted({(p['exchange'], p['routing_key']) for p in publishes})} "
                   f"(exchange, chave). {elsewhere}")
            return
        published, delta = kit.settled(
            ctx, lambda: _publisher_stats(ctx, self.exchange, self.before),
            done=lambda v: v[0] >= n and v[1]["confirm"] >= n,
            collected=lambda v: v[0] >= n or v[1]["confirm"] >= n)
        expect(delta["confirm"] >= n,
               f"O broker confirmou {delta['confirm']} de {n} publicações. {no_confirms} Ligue as confirmações "
               f"antes de publicar. {phrases.STATS_MAY_LAG}")
        expect(published >= n, f"A exchange '{self.exchange}' recebeu {published} de {n} publicações. {elsewhere} "
                               f"{phrases.STATS_MAY_LAG}")
