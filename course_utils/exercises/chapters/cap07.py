"""Checks for chapter 7 (Entrega garantida). Statements: solutions/07_entrega_garantida.ipynb.

7.1 (retries with a delay) and 7.3 (an idempotent consumer) hand the learner a channel of the
check's own and watch it with `PikaWatch` (consumers, deliveries, every ack/nack/reject, calls from
the wrong thread); `_Publishes` records, for the duration of the call, every `basic_publish` made on a
BlockingChannel (exchange, routing key, body, properties, whether confirms were on) and when, so that
the kernel side can tell a retry that waited from one that did not, and a count kept in the
application's own header from one read off `x-death`. The broker keeps the exact evidence: where
each message ended (queues read by passive declare and peek) and the definitions of the topology;
the grader reads the ack and publish counters only for what nothing else shows.

7.2 (asynchronous publisher confirms) gives the learner connection parameters with a connection name
of the check's own, and records, on pika's `Channel` class (used by SelectConnection and
BlockingConnection alike), every publish and every confirm frame the broker sent: which delivery
tag was acked or nacked is then known exactly, and whether the learner ever had more than one
message awaiting its confirm (the asynchronous strategy) or waited for each one. The queue is
limited (`x-max-length` + `x-overflow: reject-publish`), so the broker nacks what does not fit. The
bodies are a few kilobytes each: messages above the queue index's embedding threshold (4 KiB) are
written by the message store, whose confirms the broker sends in batches (`multiple=True`), so an
answer that ignores `multiple` is caught on every run.

7.4 (a quarantine topology) has no learner function to watch: `verify` purges the exercise's
queues, publishes its own probe messages with confirms, rejects and requeues them by `basic_get`
and reads where each one ended and the `x-death` the broker wrote; it is idempotent, since it runs in
the kernel and again from the grader.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.select_connection import IOLoop

_PIKA_DIR = os.path.dirname(pika.__file__)

from .. import kit, phrases
from ..checks import CheckContext, Exercise, close_quietly, expect
from ..pikawatch import PikaWatch

AMQP_ADVICE = {
    "invalid arg 'x-delivery-limit'": ("O broker recusou x-delivery-limit numa fila clássica: o limite de entregas só "
                                       "existe em filas quorum. Declare a fila com arguments={'x-queue-type': "
                                       "'quorum', 'x-delivery-limit': ..., ...}."),
    "inequivalent arg": ("O broker recusou declarar de novo uma fila ou exchange que já existe com outros "
                         "argumentos (406 PRECONDITION_FAILED): declare cada uma sempre com os mesmos "
                         "argumentos — só na função que monta a topologia."),
    "unknown delivery tag": ("Cada entrega só pode ser confirmada ou recusada uma vez, e pelo mesmo canal que a "
                             "entregou (a delivery tag só existe nele)."),
}

# the channel methods whose last call names the operation a 404 closed the channel on
RECORDED = ("exchange_declare", "queue_declare", "queue_bind", "exchange_bind", "queue_unbind", "basic_publish",
            "basic_consume", "consume", "basic_get", "queue_purge")
_MISSING = re.compile(r"no (exchange|queue) '([^']*)'")


def _operation(call: tuple[str, dict]) -> str:
    """("queue_bind", {...}) -> "channel.queue_bind(queue='a', exchange='b', routing_key='c')"."""
    method, arguments = call
    shown = ", ".join(f"{k}={arguments[k]!r}" for k in ("queue", "exchange", "source", "destination", "routing_key")
                      if arguments.get(k) not in (None, "") or (k == "exchange" and method == "basic_publish"))
    return f"channel.{method}({shown})"


def _not_found(text: str, calls: list | None) -> str:
    """A 404: which exchange or queue was missing, the operation that used it (when recorded) and the
    common cause — right names, wrong order."""
    found = _MISSING.search(text)
    if found is None:
        return ("O broker não encontrou uma fila ou exchange (404 NOT_FOUND): confira os nomes, e a ordem — cada "
                "uma precisa ser declarada antes de ser usada.")
    kind, name = found.groups()
    what = f"a exchange '{name}'" if kind == "exchange" else f"a fila '{name}'"
    keys = ("exchange", "source", "destination") if kind == "exchange" else ("queue", "destination")
    last = calls[-1] if calls else None
    used = last is not None and any(last[1].get(k) == name for k in keys)
    where = f"{_operation(last)} falhou" if used else "O broker fechou o canal"
    order = ("declare a exchange (channel.exchange_declare) antes de ligar filas a ela (queue_bind) ou publicar "
             "nela" if kind == "exchange" else
             "declare a fila (channel.queue_declare) antes de ligá-la (queue_bind), consumi-la ou publicar nela")
    return (f"{where}: {what} não existia naquele momento (404). Se o nome está certo, o que falta é a ordem: {order}. "
            f"Um queue_bind antes da declaração da exchange é a causa mais comum.")


def _amqp_advice(exc: BaseException, calls: list | None = None) -> str | None:
    """The chapter's extra sentence for an AMQP error that escaped the learner's code; `calls`
    (kit.record_calls on the handed channel) names the operation a 404 came from."""
    text = f"{getattr(exc, 'reply_text', '')} {exc}"
    if "NOT_FOUND" in text:
        return _not_found(text, calls)
    return kit.advice_in(AMQP_ADVICE, exc)


def _headers(message: dict) -> dict:
    return (message.get("properties") or {}).get("headers") or {}


# What makes the broker close a channel in this chapter's exercises.
CHANNEL_CLOSED_BY_BROKER = ("O broker o fecha quando uma entrega é confirmada duas vezes ou por outro canal "
                            "(406 PRECONDITION_FAILED - unknown delivery tag), ou quando se publica numa exchange "
                            "que não existe (404).")


class _Publishes:
    """Every basic_publish made on a BlockingChannel inside the block (any channel, any connection
    of the process), with its arguments, the time it returned and whether confirms were on for
    that channel; patched on the class for the block only. Enter it after a PikaWatch, so that the
    watch's own patch of basic_publish runs too."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.confirming: set[int] = set()
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> "_Publishes":
        log = self
        publish = self._saved["basic_publish"] = BlockingChannel.__dict__["basic_publish"]
        confirm = self._saved["confirm_delivery"] = BlockingChannel.__dict__["confirm_delivery"]

        @functools.wraps(publish)
        def basic_publish(channel, exchange, routing_key, body, properties=None, mandatory=False):
            record = {"exchange": exchange, "routing_key": routing_key, "body": body,
                      "properties": properties, "confirming": id(channel) in log.confirming,
                      "channel": channel, "thread": threading.current_thread()}
            try:
                return publish(channel, exchange, routing_key, body, properties, mandatory)
            finally:
                record["at"] = time.monotonic()  # returned (with confirms on: the broker has it)
                log.records.append(record)

        @functools.wraps(confirm)
        def confirm_delivery(channel, *args, **kwargs):
            result = confirm(channel, *args, **kwargs)
            log.confirming.add(id(channel))
            return result

        BlockingChannel.basic_publish = basic_publish
        BlockingChannel.confirm_delivery = confirm_delivery
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(BlockingChannel, name, original)

    def to(self, routing_key: str, body: str | None = None) -> list[dict]:
        return [r for r in self.records if r["routing_key"] == routing_key
                and (body is None or kit.body_text(r["body"]) == body)]


def _call_watched(ctx: CheckContext, watch: PikaWatch, publishes: _Publishes | None, name: str, *args,
                  **kwargs):
    """pikawatch.call_watched, with the publishes recorded too; a thread violation is the cause."""
    try:
        with watch:
            if publishes is None:
                return kit.call(ctx, name, *args, **kwargs)
            with publishes:
                return kit.call(ctx, name, *args, **kwargs)
    except AssertionError as exc:
        hint = watch.thread_hint(name)
        if hint is None:
            raise
        raise AssertionError(f"{hint} (A chamada terminou assim: {exc})") from None


def _persistent(headers: dict | None = None, message_id: str | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, headers=headers, message_id=message_id)


def _publish(channel, queue: str, body: str, headers: dict | None = None, message_id: str | None = None) -> None:
    channel.basic_publish(exchange="", routing_key=queue, body=body, properties=_persistent(headers, message_id))


# --- 7.1 ------------------------------------------------------------------------------------------

class _Enviar:
    """The `enviar` the check hands to the learner: fails each e-mail's first `fails` calls (None:
    always), and keeps when each call was made."""

    def __init__(self, plan: dict[str, int | None]):
        self.plan = plan
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.not_text: list = []
        self.lock = threading.Lock()

    def __call__(self, corpo) -> bool:
        if not isinstance(corpo, str):
            self.not_text.append(corpo)
            corpo = kit.body_text(corpo)
        with self.lock:
            self.calls[corpo].append(time.monotonic())
            n = len(self.calls[corpo])
        fails = self.plan.get(corpo, 0)
        return fails is not None and n > fails

    def count(self, corpo: str) -> int:
        with self.lock:
            return len(self.calls.get(corpo, []))


class Retentativas(Exercise):
    id = "7.1"
    title = "Cada e-mail que falha volta depois de uma espera, no máximo 3 tentativas, contadas no header tentativas."
    points = 3
    queue = "emails"
    wait_queue = "emails.espera"
    failed_queue = "emails.falhas"
    ttl = 300
    max_attempts = 3
    header = "tentativas"
    call_timeout = 8.0  # a right answer needs ~1.7 s: two waits of 0.3 s, then 1 s of silence
    # e-mail -> how many of its first calls of enviar fail (None: every call)
    plan = {"email 1": 0, "email 2": 1, "email 3": 2, "email 4": None, "email 5": 0, "email 6": None,
            "email 7": None}
    # e-mail -> the `tentativas` header it arrives with (a consumer before this one failed it twice)
    prior = {"email 7": 2}

    def previous(self, body: str) -> int:
        return self.prior.get(body, 0)

    def attempts(self, body: str) -> int:
        """How many times a right answer calls enviar(body)."""
        fails, left = self.plan[body], self.max_attempts - self.previous(body)
        return left if fails is None else min(fails + 1, left)

    @property
    def failed(self) -> list[str]:
        return [b for b in self.plan if self.plan[b] is None or self.plan[b] >= self.max_attempts - self.previous(b)]

    @property
    def deliveries(self) -> int:
        return sum(self.attempts(b) for b in self.plan)

    # the topology ------------------------------------------------------------------------------
    def _expect_topology(self, ctx: CheckContext) -> None:
        where = "declarar_retentativas(channel)"
        for name in (self.queue, self.wait_queue, self.failed_queue):
            q = ctx.queue(name)
            expect(q is not None, f"A fila '{name}' não existe: declare-a em {where} com "
                                  f"channel.queue_declare(queue='{name}', durable=True, ...).")
            expect(q.get("durable") and not q.get("exclusive") and not q.get("auto_delete"),
                   f"A fila '{name}' não é uma fila durável comum (durable={q.get('durable')}, "
                   f"exclusive={q.get('exclusive')}, auto_delete={q.get('auto_delete')}): as mensagens que "
                   f"esperam uma nova tentativa não podem sumir num reinício. Declare-a com durable=True.")
        wait = (ctx.queue(self.wait_queue) or {}).get("arguments") or {}
        ttl = wait.get("x-message-ttl")
        expect(ttl is not None,
               f"A fila '{self.wait_queue}' não tem x-message-ttl: sem prazo, uma mensagem que entra nela nunca sai "
               f"(ninguém a consome), e a nova tentativa não acontece. Declare-a com "
               f"arguments={{'x-message-ttl': {self.ttl}, ...}}.")
        expect(ttl == self.ttl, f"A fila '{self.wait_queue}' tem x-message-ttl={ttl!r}; o enunciado pede {self.ttl} "
                                f"(milissegundos, um inteiro).")
        dlx, key = wait.get("x-dead-letter-exchange"), wait.get("x-dead-letter-routing-key")
        expect(dlx is not None,
               f"A fila '{self.wait_queue}' não tem dead-letter exchange: quando o TTL vence, a mensagem é descartada "
               f"em vez de voltar para '{self.queue}'. Use arguments={{'x-message-ttl': {self.ttl}, "
               f"'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': '{self.queue}'}} (a exchange padrão "
               f"entrega na fila de nome igual à chave).")
        expect(dlx == "" and key == self.queue,
               f"A fila '{self.wait_queue}' manda as mensagens vencidas para a exchange {dlx!r} com a chave {key!r}; "
               f"para que voltem para '{self.queue}', use 'x-dead-letter-exchange': '' (a exchange padrão) e "
               f"'x-dead-letter-routing-key': '{self.queue}'.")
        odd = {k: v for k, v in ((ctx.queue(self.queue) or {}).get("arguments") or {}).items()
               if k in ("x-message-ttl", "x-dead-letter-exchange", "x-expires", "x-max-length")}
        expect(not odd, f"A fila '{self.queue}' foi declarada com {odd}: ela é a fila de trabalho, uma fila durável "
                        f"sem argumentos. A espera e o caminho de volta ficam na fila '{self.wait_queue}'.")

    # the call --------------------------------------------------------------------------------------
    def run(self, ctx: CheckContext) -> None:
        kit.reset_topology(ctx, queues=[self.queue, self.wait_queue, self.failed_queue])
        with kit.learner_channel(ctx, "declarar_retentativas(channel)") as channel:
            calls = kit.record_calls(channel, *RECORDED)
            ctx.call("declarar_retentativas", channel, advice=lambda exc: _amqp_advice(exc, calls))
        self._expect_topology(ctx)

        enviar = _Enviar(self.plan)
        watch, publishes = PikaWatch(), _Publishes()
        check = kit.CheckConnection(ctx)
        connection = check.connection
        watch.adopt(connection)
        try:
            channel = connection.channel()
            for body in self.plan:
                previous = self.previous(body)
                _publish(channel, self.queue, body, {self.header: previous} if previous else None,
                         message_id=f"id-{body.replace(' ', '-')}")
            closes = kit.record_calls(channel, "close")
            _call_watched(ctx, watch, publishes, "consumir_emails", channel, enviar, advice=_amqp_advice,
                          on_timeout=lambda: self._on_timeout(enviar, watch), timeout=self.call_timeout)
            channel_hint = kit.handed_channel_hint("consumir_emails", channel, closes, CHANNEL_CLOSED_BY_BROKER)
            counts = kit.exact_counts(ctx, self.queue)  # still open: a consumer left registered shows
        finally:
            check.close()

        hint = watch.thread_hint("consumir_emails")
        expect(hint is None, hint)
        expect(channel_hint is None, channel_hint)
        expect(watch.consumers, "consumir_emails() não consumiu a fila 'emails': registre um consumidor com "
                                "channel.consume('emails', inactivity_timeout=1) (ou basic_consume) no channel que "
                                "recebeu.")
        expect(not watch.auto_ack(),
               f"consumir_emails() consumiu com auto_ack=True: o broker apaga cada e-mail ao entregá-lo, antes de "
               f"saber se o envio deu certo. {phrases.MANUAL_ACK}")
        expect(not enviar.not_text, f"enviar recebeu {type(enviar.not_text[0]).__name__ if enviar.not_text else ''}; "
                                    f"ela recebe o corpo como texto (str): use body.decode().")
        expect(any(enviar.calls.values()), "enviar nunca foi chamada: para cada mensagem consumida, chame "
                                           "enviar(corpo) e decida pelo resultado.")
        requeued = watch.requeued()
        expect(not requeued,
               f"consumir_emails() devolveu e-mails à fila com requeue=True ({len(requeued)} vez(es)): a mensagem "
               f"volta na hora, sem espera nenhuma, e é entregue de novo no mesmo instante — o laço da mensagem "
               f"envenenada. Para esperar, publique uma cópia em '{self.wait_queue}' (o TTL a devolve depois de "
               f"{self.ttl} ms) e confirme a original com basic_ack.")
        self._expect_attempts(enviar, publishes)
        self._expect_copies(enviar, publishes, watch, channel)
        expect(counts is None or counts[1] == 0,
               f"Depois que consumir_emails() voltou, o consumidor continuava registrado na fila '{self.queue}' (o "
               f"broker mostrava {counts and counts[1]} consumidor): o broker continua entregando mensagens a ele, que "
               f"ficam presas sem ack. {phrases.CANCEL_CONSUMER}")

    def _expect_attempts(self, enviar: _Enviar, publishes: _Publishes) -> None:
        waiting = publishes.to(self.wait_queue)
        bare = next((r for r in waiting if self.header not in (getattr(r["properties"], "headers", None) or {})), None)
        expect(bare is None,
               f"A cópia de {kit.body_text(bare and bare['body'])!r} foi publicada em '{self.wait_queue}' sem o header "
               f"'{self.header}'. A contagem de tentativas viaja na mensagem, num header da própria aplicação: "
               f"headers={{'{self.header}': falhas}}. (Contar pelo x-death não serve: a partir do RabbitMQ 4.0 o broker "
               f"não lê o x-death de uma mensagem republicada por um cliente, e a contagem fica sempre em 1.)")
        fresh = [b for b in self.plan if not self.previous(b)]
        too_many = sorted(b for b in fresh if enviar.count(b) > self.attempts(b))
        expect(not too_many,
               f"{kit.shown(too_many)} foram tentados {enviar.count(too_many[0]) if too_many else 0} vezes; o máximo é "
               f"{self.max_attempts} tentativas no total, contando a primeira. Depois da {self.max_attempts}ª falha "
               f"(header {self.header} = {self.max_attempts}), publique a mensagem em '{self.failed_queue}' em vez "
               f"de '{self.wait_queue}'.")
        for body, previous in self.prior.items():
            sent = enviar.count(body)
            expect(sent <= self.attempts(body),
                   f"{body!r} chegou com o header {self.header}={previous} (um consumidor antes deste já tinha falhado "
                   f"{previous} vezes com ele) e foi tentado {sent} vezes aqui; esperava {self.attempts(body)}: a "
                   f"contagem de tentativas viaja na mensagem, não fica na memória do consumidor (que pode cair e "
                   f"reiniciar). Leia properties.headers.get('{self.header}', 0) de cada mensagem e publique a cópia "
                   f"com o valor + 1.")
        once = sorted(b for b in self.plan if enviar.count(b) == 1 and self.attempts(b) > 1)
        if once:
            went = publishes.to(self.wait_queue, once[0])
            why = (f"A cópia foi publicada em '{self.wait_queue}', mas não voltou para '{self.queue}' antes de "
                   f"consumir_emails() parar: pare só depois de 1 s sem mensagens novas (a espera é de {self.ttl} ms)."
                   if went else
                   f"Quando enviar devolve False, publique uma cópia em '{self.wait_queue}' (exchange '', "
                   f"routing_key='{self.wait_queue}') com o header {self.header} = falhas até agora, e confirme a "
                   f"original: o TTL da fila de espera a devolve para '{self.queue}'.")
            expect(False, f"{kit.shown(once)} falharam na primeira tentativa e não foram tentados de novo. {why}")
        short = sorted(b for b in self.plan if 1 < enviar.count(b) < self.attempts(b))
        expect(not short, f"{kit.shown(short)} foram tentados {enviar.count(short[0]) if short else 0} vezes; esperava "
                          f"{self.attempts(short[0]) if short else 0}: um e-mail que sempre falha tem "
                          f"{self.max_attempts} tentativas, contando a primeira. Confira a conta com o header "
                          f"'{self.header}' (quantas vezes já falhou) e pare de consumir só depois de 1 s sem "
                          f"mensagens novas.")
        missing = sorted(b for b in self.plan if enviar.count(b) == 0)
        expect(not missing, f"{kit.shown(missing)} nunca foram enviados: consuma até a fila esvaziar (pare depois de 1 s "
                            f"sem mensagens novas).")
        hurried = []
        for body in self.plan:
            calls = enviar.calls.get(body, [])
            hurried += [(body, later - earlier) for earlier, later in zip(calls, calls[1:])
                        if later - earlier < 0.8 * self.ttl / 1000]
        if hurried:
            body, gap = hurried[0]
            direct = publishes.to(self.queue, body)
            how = (f" As cópias foram publicadas direto em '{self.queue}': a fila de espera é "
                   f"'{self.wait_queue}', que as devolve depois do TTL." if direct else "")
            expect(False, f"{body!r} foi tentado de novo {phrases.decimal(gap, 2)} s depois da falha; a espera é de "
                          f"{self.ttl} ms.{how} Publique a cópia em '{self.wait_queue}' (routing_key="
                          f"'{self.wait_queue}' na exchange padrão) e deixe o TTL devolvê-la.")
        # the check's own publishes to the work queue were made before the call: these are the learner's
        direct = publishes.to(self.queue)
        expect(not direct,
               f"As cópias de {kit.shown(sorted({kit.body_text(r['body']) for r in direct}))} foram publicadas direto em "
               f"'{self.queue}' (routing_key='{self.queue}'), sem passar pela fila de espera '{self.wait_queue}'. A "
               f"espera é o TTL de '{self.wait_queue}' ({self.ttl} ms), que devolve a cópia para '{self.queue}' sem "
               f"prender o consumidor — esperar no consumidor (time.sleep) para todos os outros e-mails enquanto "
               f"isso. Publique a cópia em '{self.wait_queue}' (ou em '{self.failed_queue}' na "
               f"{self.max_attempts}ª falha).")

    def _expect_copies(self, enviar: _Enviar, publishes: _Publishes, watch: PikaWatch, channel) -> None:
        copies = publishes.to(self.wait_queue) + publishes.to(self.failed_queue)
        if not copies:
            return  # published some other way: the broker side judges where the e-mails ended
        elsewhere = next((r for r in copies if r["channel"] is not channel), None)
        expect(elsewhere is None,
               f"A cópia de {kit.body_text(elsewhere and elsewhere['body'])!r} foi publicada em "
               f"'{elsewhere and elsewhere['routing_key']}' por outro canal (não pelo `channel` que consumir_emails "
               f"recebeu): o enunciado pede a cópia pelo mesmo `channel`, o que consome e confirma a original — nele "
               f"as confirmações ficam ligadas uma vez, e a função não deixa um canal seu aberto depois de voltar. "
               f"Publique com channel.basic_publish(...).")
        for r in copies:
            body = kit.body_text(r["body"])
            expect(kit.persistent_properties(r["properties"]),
                   f"A cópia de {body!r} publicada em '{r['routing_key']}' não é persistente: num reinício ela some "
                   f"(e a original já foi confirmada). {phrases.PERSISTENT}, com headers.")
            expect(r["confirming"],
                   f"A cópia de {body!r} foi publicada num canal sem confirmações: se o broker cair antes de gravá-la, "
                   f"ela se perde — e a original já foi confirmada. Chame channel.confirm_delivery() antes da "
                   f"primeira cópia (logo antes de consumir): então basic_publish só volta quando o broker tem a cópia, e o basic_ack da original "
                   f"vem depois.")
        for body in self.plan:
            sent = [r for r in copies if kit.body_text(r["body"]) == body]
            expected = list(range(self.previous(body) + 1, self.previous(body) + len(sent) + 1))
            got = [(getattr(r["properties"], "headers", None) or {}).get(self.header) for r in sent]
            expect(got == expected,
                   f"As cópias de {body!r} levaram o header {self.header} = {got}; esperava {expected}: o número de "
                   f"vezes que o e-mail já falhou (o que veio na mensagem, properties.headers.get('{self.header}', 0), "
                   f"mais 1). Conte num header seu: a partir do RabbitMQ 4.0 o broker não lê o x-death de uma mensagem "
                   f"republicada por um cliente.")
        for body in self.plan:
            # the k-th copy of an e-mail comes from its k-th delivery, which ends in its k-th ack
            sent = [r for r in copies if kit.body_text(r["body"]) == body]
            acks = [s for s in watch.settles if s.kind == "basic_ack" and body.encode() in s.bodies]
            early = next((r for r, s in zip(sent, acks) if s.at < r["at"]), None)
            expect(early is None,
                   f"consumir_emails() confirmou {body!r} (basic_ack) antes de publicar a cópia em "
                   f"'{early and early['routing_key']}': se o consumidor cair entre os dois, o e-mail some. Publique "
                   f"a cópia (com as confirmações ligadas, basic_publish só volta quando o broker a tem) e só depois "
                   f"confirme a original.")

    def _on_timeout(self, enviar: _Enviar, watch: PikaWatch) -> str:
        most = max(self.plan, key=enviar.count)
        if enviar.count(most) > self.max_attempts:
            return (f"`consumir_emails` não terminou em {self.call_timeout:.0f} s: {most!r} já foi tentado "
                    f"{enviar.count(most)} vezes — as falhas voltam sem fim. Depois da {self.max_attempts}ª falha "
                    f"(o header '{self.header}' conta quantas já houve), publique em '{self.failed_queue}' e confirme "
                    f"a original.")
        return (f"`consumir_emails` não terminou em {self.call_timeout:.0f} s. Consuma com "
                f"channel.consume('{self.queue}', inactivity_timeout=1) e pare no primeiro (None, None, None): 1 s sem "
                f"mensagens novas.")

    # the broker -------------------------------------------------------------------------------------
    def verify(self, ctx: CheckContext) -> None:
        self._expect_topology(ctx)
        ready, consumers = kit.counts_of(ctx, self.queue)
        expect(consumers == 0, f"Ainda há {consumers} consumidor(es) registrado(s) na fila '{self.queue}'. "
                               f"{phrases.CANCEL_CONSUMER}")
        waiting = kit.exact_counts(ctx, self.wait_queue)
        expect(not ready and not (waiting and waiting[0]),
               f"Ficaram {ready} mensagem(ns) em '{self.queue}' e {waiting and waiting[0]} em '{self.wait_queue}': "
               f"consumir_emails() parou antes de a última nova tentativa voltar, ou deixou entregas sem ack (elas "
               f"voltam quando a conexão fecha). Pare só depois de 1 s sem mensagens novas e termine cada entrega com "
               f"basic_ack.")
        peeked = ctx.management.peek(self.failed_queue, 20)
        bodies = sorted(kit.payload_text(m) for m in peeked)
        expect(bodies == sorted(self.failed),
               f"A fila '{self.failed_queue}' tem {bodies}; esperava {sorted(self.failed)}: os e-mails que falharam "
               f"nas {self.max_attempts} tentativas (um chegou já com {self.header}=2 e falhou mais uma vez).")
        for message in peeked:
            body, count = kit.payload_text(message), _headers(message).get(self.header)
            expect(count == self.max_attempts,
                   f"{body!r} está em '{self.failed_queue}' com o header {self.header}={count!r}; esperava "
                   f"{self.max_attempts}: publique-a com headers={{'{self.header}': {self.max_attempts}}} (as falhas "
                   f"que ela teve).")
            expect(kit.is_persistent(message), f"{body!r} está em '{self.failed_queue}' sem ser persistente: "
                                               f"{phrases.PERSISTENT}.")
        if ctx.namespace is not None:
            return  # in the kernel, run() saw every attempt, copy and ack exactly
        copies = sum(self.attempts(b) - 1 for b in self.plan)

        def probe():
            return kit.stats(ctx.queue(self.queue)), kit.stats(ctx.queue(self.wait_queue))

        def final(value):  # a right answer's figures, or a fault that more statistics cannot undo
            s, w = value
            no_ack = s.get("deliver_no_ack", 0) + s.get("get_no_ack", 0)
            return (no_ack or s.get("ack", 0) > self.deliveries or w.get("publish", 0) > copies
                    or (s.get("deliver_get", 0) >= self.deliveries and s.get("ack", 0) < s.get("deliver_get", 0))
                    or (s.get("ack", 0) >= self.deliveries and w.get("publish", 0) >= copies))

        s, w = ctx.eventually(probe, final)
        q = {"message_stats": s}
        acks = kit.stats(q).get("ack", 0)
        expect(kit.no_ack_deliveries(q) == 0, f"Mensagens de '{self.queue}' foram entregues com auto_ack=True. "
                                              f"{phrases.MANUAL_ACK} {phrases.STATS_MAY_LAG}")
        expect(acks == self.deliveries,
               f"O broker registrou {acks} acks em '{self.queue}'; esperava {self.deliveries}, um por tentativa "
               f"(cada entrega termina em basic_ack: a nova tentativa é uma cópia). {phrases.STATS_MAY_LAG}")
        waited = w.get("publish", 0)
        expect(waited == copies,
               f"'{self.wait_queue}' recebeu {waited} cópia(s); esperava {copies}, uma por falha que ainda tinha "
               f"tentativa. {phrases.STATS_MAY_LAG}")


# --- 7.2 ------------------------------------------------------------------------------------------

class _Confirms:
    """On pika's Channel class (both adapters), for the block: the delivery tag of each publish made
    after confirm_delivery on a channel, the confirm frames the broker sent (ack/nack, tag, multiple)
    and, at each publish, how many of that channel's publishes were still awaiting their confirm."""

    def __init__(self) -> None:
        self.channels: dict[int, dict] = {}
        self.peak = 0
        self.blocking = False
        self.selects: list = []  # every SelectConnection created in the block
        self.timers: list[tuple[float, Any]] = []  # (delay, callback) of the learner's own ioloop.call_later
        self.answered_at: float | None = None  # when the last publish awaiting its confirm got it
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> "_Confirms":
        log = self
        publish = self._saved["basic_publish"] = pika.channel.Channel.__dict__["basic_publish"]
        confirm = self._saved["confirm_delivery"] = pika.channel.Channel.__dict__["confirm_delivery"]

        @functools.wraps(confirm)
        def confirm_delivery(channel, ack_nack_callback, callback=None):
            state = log.channels.setdefault(id(channel), {"published": [], "frames": [], "open": set(), "next": 1})

            def on_frame(frame):
                method = frame.method
                kind = "ack" if isinstance(method, pika.spec.Basic.Ack) else "nack"
                state["frames"].append((kind, method.delivery_tag, method.multiple))
                if method.multiple:
                    state["open"] -= {t for t in state["open"] if t <= method.delivery_tag}
                else:
                    state["open"].discard(method.delivery_tag)
                if not any(s["open"] for s in log.channels.values()):
                    log.answered_at = time.monotonic()
                return ack_nack_callback(frame)

            return confirm(channel, on_frame, callback)

        @functools.wraps(publish)
        def basic_publish(channel, exchange, routing_key, body, properties=None, mandatory=False):
            state = log.channels.get(id(channel))
            if state is not None:
                tag = state["next"]
                state["next"] += 1
                state["published"].append((tag, exchange, routing_key, body, properties))
                state["open"].add(tag)
                log.peak = max(log.peak, len(state["open"]))
            return publish(channel, exchange, routing_key, body, properties, mandatory)

        pika.channel.Channel.basic_publish = basic_publish
        pika.channel.Channel.confirm_delivery = confirm_delivery
        self._blocking_init = pika.BlockingConnection.__init__
        original_init = self._blocking_init

        @functools.wraps(original_init)
        def blocking_init(connection, *args, **kwargs):
            log.blocking = True
            return original_init(connection, *args, **kwargs)

        pika.BlockingConnection.__init__ = blocking_init
        self._select_init = pika.SelectConnection.__init__
        select_init = self._select_init

        @functools.wraps(select_init)
        def recording_init(connection, *args, **kwargs):
            log.selects.append(connection)
            return select_init(connection, *args, **kwargs)

        pika.SelectConnection.__init__ = recording_init
        self._call_later = IOLoop.__dict__["call_later"]
        call_later = self._call_later

        @functools.wraps(call_later)
        def recording_call_later(ioloop, delay, callback):
            # pika schedules timers of its own (heartbeats, timeouts): keep only the learner's
            if not sys._getframe(1).f_code.co_filename.startswith(_PIKA_DIR):
                log.timers.append((delay, callback))
            return call_later(ioloop, delay, callback)

        IOLoop.call_later = recording_call_later
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(pika.channel.Channel, name, original)
        pika.BlockingConnection.__init__ = self._blocking_init
        pika.SelectConnection.__init__ = self._select_init
        IOLoop.call_later = self._call_later

    def deadline_closes(self, callback) -> bool:
        """Whether the learner's deadline callback closes its connection when that is still open:
        run once the call is over, with each SelectConnection shown as open and its close() only
        recorded (nothing reaches the socket, long closed by then)."""
        closed: list = []
        if getattr(callback, "__name__", "") == "close" and getattr(callback, "__self__", None) in self.selects:
            return True  # call_later(3, connection.close)
        saved = [(c, c.connection_state) for c in self.selects]
        for c in self.selects:
            c.close = lambda *a, _c=c, **k: closed.append(_c)
            c.connection_state = c.CONNECTION_OPEN
        try:
            callback()
        except Exception:  # noqa: BLE001 - whatever else it touches is closed by now
            pass
        finally:
            for c, state in saved:
                del c.close
                c.connection_state = state
        return bool(closed)

    def left_open(self) -> list:
        """The SelectConnections created in the block that are not closed (exact, kernel side)."""
        return [c for c in self.selects if not c.is_closed]

    def outcome(self) -> dict[str, str]:
        """body -> 'ack' / 'nack' as the broker answered (bodies published under confirms)."""
        result: dict[str, str] = {}
        for state in self.channels.values():
            by_tag = {tag: kit.body_text(body) for tag, _, _, body, _ in state["published"]}
            settled: dict[int, str] = {}
            for kind, tag, multiple in state["frames"]:
                tags = [t for t in by_tag if t <= tag and t not in settled] if multiple else [tag]
                for t in tags:
                    settled.setdefault(t, kind)
            for t, kind in settled.items():
                if t in by_tag:
                    result[by_tag[t]] = kind
        return result

    def frames(self) -> list[tuple[str, int, bool]]:
        return [f for state in self.channels.values() for f in state["frames"]]

    def published(self) -> list[tuple]:
        return [p for state in self.channels.values() for p in state["published"]]


def _nota(numero: int) -> str:
    """A body of a few KiB (see the module docstring): an invoice with its items."""
    itens = "".join(f'<item seq="{i}"><produto>Parafuso sextavado M{6 + i % 6} x {20 + i} mm, aço inox</produto>'
                    f'<qtd>{(numero * i) % 40 + 1}</qtd><valor>{(numero + i) % 97 + 0.5:.2f}</valor></item>'
                    for i in range(1, 41))
    return f'<nfe numero="{numero:03d}"><emitente>Ferragens Boa Vista</emitente><itens>{itens}</itens></nfe>'


def _label(body: str) -> str:
    """'nota 007' for the invoice body (hints name invoices by their number)."""
    start = body.find('numero="')
    return f"nota {body[start + 8:start + 11]}" if start >= 0 else repr(body[:30])


def _labels(bodies) -> str:
    shown = sorted(_label(kit.body_text(b)) for b in bodies)
    return ", ".join(shown[:5]) + (f"... ({len(shown)} ao todo)" if len(shown) > 5 else "")


class ConfirmacoesAssincronas(Exercise):
    id = "7.2"
    title = "publicar_notas() publica sem esperar cada confirmação e diz, de cada nota, se o broker a confirmou ou recusou."
    points = 3
    queue = "notas"
    limit = 40
    count = 120
    call_timeout = 5.0  # a right answer needs well under a second; the statement's own limit is 3 s
    deadline = 3  # the statement's connection.ioloop.call_later(3, ...)
    close_lag = 0.5  # s from the broker's last answer to the return: closing when nothing is pending is at once

    @property
    def bodies(self) -> list[str]:
        return [_nota(i) for i in range(1, self.count + 1)]

    def snapshot(self, ctx: CheckContext) -> None:
        self.before = kit.connection_names(ctx)

    def _mine(self, ctx: CheckContext) -> list[str]:
        """Names of the connections still open that the learner opened with the check's parameters."""
        marker = f"curso verificação {uuid.uuid4().hex[:12]}"
        connection = ctx.curso.connect(client_properties={"connection_name": marker})
        try:
            records = ctx.eventually(ctx.management.connections, lambda rs: any(
                (r.get("client_properties") or {}).get("connection_name") == marker for r in rs), timeout=ctx.stats_wait)
        finally:
            close_quietly(connection)
        return [r["name"] for r in records if (r.get("client_properties") or {}).get("connection_name") == self.tag]

    def run(self, ctx: CheckContext) -> None:
        kit.fresh_queue(ctx, self.queue, arguments={"x-max-length": self.limit, "x-overflow": "reject-publish"})
        self.tag = f"curso-notas-{uuid.uuid4().hex[:10]}"
        params = ctx.curso.params(client_properties={"connection_name": self.tag})
        confirms = _Confirms()
        self.open_before = kit.open_connections()
        corpos = self.bodies
        timed_out = False
        try:
            with confirms:
                result = kit.call(ctx, "publicar_notas", params, self.queue, list(corpos), advice=_amqp_advice,
                                  on_timeout=lambda: self._on_timeout(confirms), timeout=self.call_timeout)
                returned = time.monotonic()
        except AssertionError:
            timed_out = ctx.timed_out
            raise
        finally:
            if timed_out:  # its ioloop was cut mid-call: the broker closes what it left behind
                for name in self._mine(ctx):
                    ctx.management.close_connection(name)
        published = confirms.published()
        expect(published or not confirms.blocking,
               "publicar_notas() publicou sem ligar as confirmações, ou numa BlockingConnection: este exercício é a "
               "estratégia assíncrona, com pika.SelectConnection(params, ...) e channel.confirm_delivery("
               "ack_nack_callback=..., callback=...) antes de publicar.")
        expect(published, "publicar_notas() não publicou nenhuma nota com as confirmações ligadas. Abra a conexão "
                          "com pika.SelectConnection(params, on_open_callback=...), ligue as confirmações com "
                          "channel.confirm_delivery(ack_nack_callback=..., callback=...) e só depois publique.")
        expect(not confirms.blocking and confirms.peak > 1,
               f"publicar_notas() esperou a confirmação de cada nota antes de publicar a seguinte (nunca houve mais "
               f"de {confirms.peak} nota sem resposta do broker){' numa BlockingConnection' if confirms.blocking else ''}: "
               f"é a estratégia de uma por vez, a mais lenta. Publique todas com pika.SelectConnection, sem esperar, "
               f"e receba as respostas no ack_nack_callback de channel.confirm_delivery.")
        wrong_route = next((p for p in published if (p[1], p[2]) != ("", self.queue)), None)
        expect(wrong_route is None,
               f"publicar_notas() publicou em exchange={wrong_route and wrong_route[1]!r}, routing_key="
               f"{wrong_route and wrong_route[2]!r}; publique na exchange padrão com routing_key=fila ('{self.queue}').")
        again = [b for b, n in Counter(kit.body_text(p[3]) for p in published).items() if n > 1]
        expect(not again,
               f"publicar_notas() publicou {len(published)} vezes para {self.count} notas ({_labels(again)} mais de uma "
               f"vez): publique cada nota uma vez. Uma nota recusada porque a fila está cheia leva outro nack se for "
               f"publicada de novo na hora: devolva-a em 'recusadas' — quem chamou decide o que fazer com ela.")
        expect(all(kit.persistent_properties(p[4]) for p in published),
               f"publicar_notas() publicou notas que não são persistentes: uma confirmação de mensagem transitória só "
               f"diz que o broker a tem na memória. {phrases.PERSISTENT}.")
        truth = confirms.outcome()
        expect(isinstance(result, dict) and set(result) >= {"confirmadas", "recusadas"},
               f"publicar_notas() devolveu {type(result).__name__}; esperava um dict com as listas 'confirmadas' e "
               f"'recusadas': {{'confirmadas': [...], 'recusadas': [...]}}.")
        confirmed, refused = list(result["confirmadas"]), list(result["recusadas"])
        given = set(corpos)
        strange = [b for b in confirmed + refused if kit.body_text(b) not in given]
        expect(not strange, f"As listas devolvidas têm {len(strange)} item(ns) que não são corpos publicados (por "
                            f"exemplo {str(strange[:1])[:60]}): devolva os próprios corpos, como recebeu em `corpos`.")
        confirmed, refused = [kit.body_text(b) for b in confirmed], [kit.body_text(b) for b in refused]
        twice = [b for b, n in Counter(confirmed + refused).items() if n > 1]
        expect(not twice, f"{_labels(twice)} aparecem mais de uma vez nas listas devolvidas: cada nota termina "
                          f"confirmada ou recusada, uma vez. Tire a delivery tag das pendentes assim que o broker "
                          f"responder por ela.")
        acked = {b for b, kind in truth.items() if kind == "ack"}
        nacked = {b for b, kind in truth.items() if kind == "nack"}
        multiple = [f for f in confirms.frames() if f[2]]
        fake_ok = sorted(set(confirmed) & nacked)
        fake_no = sorted(set(refused) & acked)
        shifted = (" Se é só a nota da fronteira, confira a contagem das delivery tags: elas numeram as publicações "
                   "do canal a partir de 1 (enumerate(corpos, start=1)), não de 0."
                   if 0 < len(fake_ok) + len(fake_no) <= 2 else "")
        expect(not fake_ok,
               f"{_labels(fake_ok)} está(ão) em 'confirmadas', mas o broker recusou (Basic.Nack: a fila '{self.queue}' "
               f"aceita só {self.limit} e recusa o resto). No ack_nack_callback, olhe o tipo do frame: "
               f"isinstance(frame.method, pika.spec.Basic.Ack) é confirmação; pika.spec.Basic.Nack é recusa.{shifted}")
        expect(not fake_no,
               f"{_labels(fake_no)} está(ão) em 'recusadas', mas o broker confirmou. Com multiple=True, o frame vale "
               f"para todas as pendentes até frame.method.delivery_tag (e só elas); sem multiple, só para essa "
               f"tag.{shifted}")
        silent = sorted(given - set(confirmed) - set(refused))
        if silent:
            answered = sorted(b for b in silent if b in truth)
            why = (f" O broker respondeu por elas, mas em frames com multiple=True ({len(multiple)} frame(s) assim): "
                   f"um frame com multiple=True vale para todas as pendentes com delivery tag até "
                   f"frame.method.delivery_tag, não só para ela." if answered and multiple else
                   " Espere a resposta do broker por cada uma antes de fechar a conexão.")
            expect(False, f"{len(silent)} de {self.count} notas não estão em nenhuma das listas ({_labels(silent)}): "
                          f"sumiram em silêncio, o que as confirmações existem para impedir.{why}")
        left = confirms.left_open() or (confirms.blocking and kit.open_connections() - self.open_before)
        expect(not left, "publicar_notas() voltou com a conexão ainda aberta. Feche-a com "
                         "connection.close() quando a última resposta chegar, e pare o ioloop no on_close_callback "
                         "(connection.ioloop.stop()).")
        lag = returned - (confirms.answered_at or returned)
        expect(lag < self.close_lag,
               f"O broker respondeu pela última nota, e publicar_notas() só voltou {phrases.decimal(lag, 2)} s depois: quem "
               f"fechou a conexão foi o prazo, não o fim das pendentes. Feche a conexão assim que não houver mais "
               f"pendentes (no ack_nack_callback, depois de tirar as tags respondidas: if not pendentes: "
               f"connection.close()); o prazo é só para o caso de o broker não responder.")
        expect(confirms.timers,
               "publicar_notas() não pôs um prazo: se o broker não responder por alguma nota, o ioloop roda para "
               "sempre e a função nunca volta. Antes de connection.ioloop.start(), agende "
               "connection.ioloop.call_later(3, prazo_esgotado), com uma função prazo_esgotado que fecha a conexão "
               "se ela ainda estiver aberta.")
        delays = [d for d, _ in confirms.timers]
        expect(any(d == self.deadline for d in delays),
               f"publicar_notas() agendou connection.ioloop.call_later com {', '.join(f'{d!r} s' for d in delays)}; "
               f"o enunciado pede um prazo de {self.deadline} s: connection.ioloop.call_later({self.deadline}, ...).")
        expect(any(confirms.deadline_closes(cb) for d, cb in confirms.timers if d == self.deadline),
               f"O prazo de publicar_notas() (connection.ioloop.call_later({self.deadline}, ...)) não fecha a conexão: "
               f"quando ele vence, a conexão ainda está aberta e o ioloop continua rodando. A função agendada deve "
               f"fechá-la: if connection.is_open: connection.close() (e o on_close_callback para o ioloop).")

    def _on_timeout(self, confirms: _Confirms) -> str:
        published, frames = confirms.published(), confirms.frames()
        if published and frames:
            waiting = len(published) - len(confirms.outcome())
            state = (f"o broker já tinha respondido por todas as {len(published)} notas, e a função continuou "
                     f"esperando" if not waiting else f"faltava a resposta do broker para {waiting} de "
                     f"{len(published)} notas")
            return (f"`publicar_notas` não voltou em {self.call_timeout:.0f} s: {state}. Um frame com multiple=True "
                    f"vale para todas as pendentes até frame.method.delivery_tag. Feche a conexão quando não houver "
                    f"pendentes, pare o ioloop no on_close_callback, e ponha um prazo: "
                    f"connection.ioloop.call_later(3, ...) que fecha a conexão.")
        return (f"`publicar_notas` não voltou em {self.call_timeout:.0f} s: o ioloop continuou rodando. Pare-o com "
                f"connection.ioloop.stop() no on_close_callback, feche a conexão quando a última resposta chegar e "
                f"ponha um prazo: connection.ioloop.call_later(3, ...) que fecha a conexão.")

    def verify(self, ctx: CheckContext) -> None:
        ready, _ = kit.counts_of(ctx, self.queue)
        expect(ready == self.limit,
               f"A fila '{self.queue}' tem {ready} nota(s); esperava {self.limit}: a fila aceita {self.limit} e recusa "
               f"as outras (nack). publicar_notas() deve publicar cada nota uma vez, na exchange padrão, com "
               f"routing_key=fila — e não publicar de novo as recusadas.")
        peeked = ctx.management.peek(self.queue, self.limit)
        expect([kit.payload_text(m) for m in peeked] == self.bodies[:self.limit],
               f"As notas na fila '{self.queue}' não são as {self.limit} primeiras, na ordem: publique os corpos que "
               f"recebeu, na ordem de `corpos`, sem mudá-los.")
        expect(all(kit.is_persistent(m) for m in peeked),
               f"As notas na fila '{self.queue}' não são persistentes: {phrases.PERSISTENT}.")
        if ctx.namespace is not None:
            return  # in the kernel, run() found the learner's connection by its name, exactly
        leaked = kit.connections_now(ctx) - self.before
        expect(not leaked, f"O broker ainda mostra {len(leaked)} conexão(ões) aberta(s) por publicar_notas(). Feche a "
                           f"conexão com connection.close() quando a última resposta chegar.")


# --- 7.3 ------------------------------------------------------------------------------------------

class _Cobrar:
    """The `cobrar` the check hands to the learner: records every charge, by body."""

    def __init__(self) -> None:
        self.charges: Counter = Counter()
        self.not_text: list = []
        self.lock = threading.Lock()

    def __call__(self, corpo) -> None:
        if not isinstance(corpo, str):
            self.not_text.append(corpo)
            corpo = kit.body_text(corpo)
        with self.lock:
            self.charges[corpo] += 1


def _pagamento(cliente: str, valor: int) -> str:
    return json.dumps({"cliente": cliente, "valor": valor}, ensure_ascii=False)


class SemDuplicar(Exercise):
    id = "7.3"
    title = "consumir_pagamentos() cobra cada message_id uma vez só, com duplicatas e reentregas, e confirma tudo."
    points = 3
    queue = "cobrancas"
    call_timeout = 6.0
    ANA, BRUNO, CARLA, DAVI, ELISA = (_pagamento("Ana", 10), _pagamento("Bruno", 25), _pagamento("Carla", 40),
                                      _pagamento("Davi", 15), _pagamento("Elisa", 30))
    # a consumer before the learner's took these and fell before the ack; it had charged pg-004 only
    crashed = [("pg-004", CARLA), ("pg-006", DAVI)]
    already = {"pg-004"}
    # the producer published pg-001 twice (it did not see the first confirm), and pg-002 twice
    later = [("pg-001", ANA), ("pg-002", BRUNO), ("pg-001", ANA), ("pg-003", ANA), ("pg-005", ELISA),
             ("pg-002", BRUNO)]
    # published `late_at` s into the call: a consumer that stops before ~1 s of silence misses it
    FABIO = _pagamento("Fábio", 20)
    late = [("pg-007", FABIO)]
    late_at = 0.3

    @property
    def messages(self) -> list[tuple[str, str]]:
        return self.crashed + self.later + self.late

    @property
    def deliveries(self) -> int:
        return len(self.messages)

    @property
    def charges(self) -> Counter:
        seen, result = set(self.already), Counter()
        for message_id, body in self.messages:
            if message_id not in seen:
                seen.add(message_id)
                result[body] += 1
        return result

    @property
    def ids(self) -> set[str]:
        return {m for m, _ in self.messages}

    def _publish(self, channel, messages) -> None:
        for message_id, body in messages:
            _publish(channel, self.queue, body, message_id=message_id)

    def run(self, ctx: CheckContext) -> None:
        cobrar = _Cobrar()
        processados = set(self.already)
        watch = PikaWatch()
        check = kit.CheckConnection(ctx)
        connection = check.connection
        watch.adopt(connection)
        try:
            channel = connection.channel()
            kit.fresh_queue(ctx, self.queue, channel=channel)
            channel.confirm_delivery()
            self._publish(channel, self.crashed)
            crash = connection.channel()  # a consumer that falls with both in hand: they come back redelivered
            for _ in self.crashed:
                crash.basic_get(queue=self.queue, auto_ack=False)
            crash.close()
            self._publish(channel, self.later)
            closes = kit.record_calls(channel, "close")
            with kit.LatePublisher(ctx, self.queue, [(self.late_at, [(body, _persistent(message_id=message_id))
                                                            for message_id, body in self.late])], confirm=True):
                _call_watched(ctx, watch, None, "consumir_pagamentos", channel, self.queue, cobrar, processados,
                              advice=_amqp_advice, on_timeout=lambda: self._on_timeout(watch),
                              timeout=self.call_timeout)
            channel_hint = kit.handed_channel_hint("consumir_pagamentos", channel, closes, CHANNEL_CLOSED_BY_BROKER)
            counts = kit.exact_counts(ctx, self.queue)  # still open: a consumer left registered shows
        finally:
            check.close()

        hint = watch.thread_hint("consumir_pagamentos")
        expect(hint is None, hint)
        expect(channel_hint is None, channel_hint)
        expect(watch.consumers, f"consumir_pagamentos() não consumiu a fila '{self.queue}': registre um consumidor no "
                                f"channel que recebeu (channel.consume(fila, inactivity_timeout=1), ou basic_consume).")
        expect(any(how != "basic_get" for how, _ in watch.consumers),
               "consumir_pagamentos() buscou as mensagens uma a uma com basic_get, sem registrar um consumidor: o "
               "enunciado pede um consumidor — o broker empurra as mensagens para ele, sem uma ida e volta por "
               "mensagem, e ele espera as que chegam depois. Consuma com channel.consume(fila, auto_ack=False, "
               "inactivity_timeout=1) e, no fim, channel.cancel().")
        expect(not watch.auto_ack(),
               f"consumir_pagamentos() consumiu com auto_ack=True: o broker apaga cada pagamento ao entregá-lo, e um "
               f"consumidor que cai depois de cobrar e antes de terminar o perde. {phrases.MANUAL_ACK}")
        expect(not cobrar.not_text, f"cobrar recebeu {type(cobrar.not_text[0]).__name__ if cobrar.not_text else ''}; "
                                    f"ela recebe o corpo como texto (str): use body.decode().")
        late = [b for _, b in self.late if b.encode() not in set(watch.deliveries.values())]
        expect(not late,
               f"O pagamento {', '.join(m for m, _ in self.late)} ({kit.shown(late)}), publicado {phrases.decimal(self.late_at, 2)} s "
               f"depois de consumir_pagamentos() começar, nunca foi entregue a ela: a função parou de consumir cedo "
               f"demais. Pare só depois de 1 s sem mensagens novas: channel.consume(fila, auto_ack=False, "
               f"inactivity_timeout=1), e saia do laço no primeiro (None, None, None).")
        expected, got = self.charges, cobrar.charges
        expect(got, "cobrar nunca foi chamada: para cada pagamento novo, chame cobrar(corpo).")
        added = set(processados) - self.already
        expect(added or got[self.CARLA] or not any(n > 1 for n in got.values()),
               f"consumir_pagamentos() consulta `processados`, mas nunca acrescenta nada a ele (depois da chamada, "
               f"ele só tem {sorted(self.already)}, o que já estava lá): por isso a segunda cópia de um pagamento é "
               f"cobrada de novo. Depois de cobrar, acrescente o identificador: "
               f"processados.add(properties.message_id).")
        bruno = got[self.BRUNO]
        expect(bruno <= 1,
               f"O pagamento pg-002 ({self.BRUNO}) chegou duas vezes e foi cobrado {bruno} vezes: o produtor publicou "
               f"de novo uma mensagem cuja confirmação não viu, e cobrar as duas é cobrar o cliente em dobro. Antes de "
               f"cobrar, veja se properties.message_id já está em `processados`.")
        ana = got[self.ANA]
        expect(ana <= expected[self.ANA],
               f"{self.ANA} foi cobrado {ana} vezes; esperava {expected[self.ANA]}: pg-001 chegou duas vezes (o "
               f"produtor publicou de novo uma mensagem cuja confirmação não viu), e cobrar duas vezes a mesma "
               f"mensagem é cobrar o cliente em dobro. Antes de cobrar, veja se properties.message_id já está em "
               f"`processados`.")
        expect(ana >= expected[self.ANA],
               f"{self.ANA} foi cobrado {ana} vez(es); esperava {expected[self.ANA]}: pg-001 e pg-003 têm o mesmo "
               f"corpo, mas são dois pagamentos diferentes (message_id diferentes — a Ana pagou duas vezes). Quem "
               f"identifica a mensagem é properties.message_id, não o corpo.")
        carla = got[self.CARLA]
        expect(not carla,
               f"O pagamento pg-004 ({self.CARLA}) foi cobrado {carla} vez(es), mas já estava em `processados` antes "
               f"da chamada: um consumidor anterior o cobrou e caiu antes do ack, e o broker o reentregou. Consulte o "
               f"conjunto `processados` que a função recebe (não um conjunto novo dentro dela): se "
               f"properties.message_id estiver nele, confirme sem cobrar.")
        davi = got[self.DAVI]
        expect(davi == 1,
               f"O pagamento pg-006 ({self.DAVI}) foi cobrado {davi} vez(es); esperava 1. Ele chegou reentregue "
               f"(method.redelivered=True: um consumidor o pegou e caiu antes do ack), mas ninguém o tinha cobrado — "
               f"não está em `processados`. redelivered=True quer dizer \"talvez já tenha sido entregue\", não \"já "
               f"foi processado\": quem decide é `processados`.")
        wrong = {b: (got[b], n) for b, n in expected.items() if got[b] != n}
        expect(not wrong, "Cobranças por pagamento erradas: " + "; ".join(
            f"{b} cobrado {g} vez(es), esperava {n}" for b, (g, n) in wrong.items()) +
            ". Cobre cada message_id novo uma vez e pule os que já estão em `processados`.")
        missing = sorted(self.ids - set(processados))
        expect(not missing, f"Depois da chamada, `processados` não tem {missing}: depois de cobrar, acrescente o "
                            f"message_id com processados.add(properties.message_id) — é o que impede a cobrança em "
                            f"dobro quando a mensagem voltar.")
        requeued = watch.requeued()
        expect(not requeued,
               f"consumir_pagamentos() devolveu {len(requeued)} entrega(s) à fila (requeue=True): uma duplicata "
               f"devolvida volta na hora, é devolvida de novo... Uma duplicata já foi tratada: confirme-a com basic_ack "
               f"e siga.")
        outcomes = watch.outcomes()
        rejected = sorted({kit.body_text(b) for b, what in outcomes.items() if "reject" in what})
        expect(not rejected,
               f"consumir_pagamentos() recusou {rejected} com requeue=False: numa fila com dead-letter exchange, a "
               f"duplicata iria para a fila de falhas como se fosse um erro. A duplicata não é um erro — o pagamento "
               f"já foi feito: confirme-a com basic_ack.")
        unsettled = [k for k in watch.deliveries if k not in watch.settled]
        expect(not unsettled,
               f"{len(unsettled)} entrega(s) não foram confirmadas ({kit.shown(sorted({watch.deliveries[k] for k in unsettled}))}): "
               f"uma duplicata também precisa de basic_ack — sem ele, ela volta para a fila quando o canal fecha e é "
               f"entregue de novo, para sempre.")
        expect(counts is None or counts[1] == 0,
               f"Depois que consumir_pagamentos() voltou, o consumidor continuava registrado na fila '{self.queue}': o "
               f"broker continua entregando mensagens a ele, que ficam presas sem ack. {phrases.CANCEL_CONSUMER}")

    def _on_timeout(self, watch: PikaWatch) -> str:
        if watch.requeued():
            return (f"`consumir_pagamentos` não terminou em {self.call_timeout:.0f} s: ela devolveu duplicatas à fila "
                    f"(requeue=True) {len(watch.requeued())} vez(es), e elas voltam na hora, sem fim. Confirme a "
                    f"duplicata com basic_ack: ela já foi tratada.")
        return (f"`consumir_pagamentos` não terminou em {self.call_timeout:.0f} s. Consuma com "
                f"channel.consume(fila, inactivity_timeout=1) e pare no primeiro (None, None, None): 1 s sem "
                f"mensagens novas.")

    def verify(self, ctx: CheckContext) -> None:
        ready, consumers = kit.counts_of(ctx, self.queue)
        expect(consumers == 0, f"Ainda há {consumers} consumidor(es) registrado(s) na fila '{self.queue}'. "
                               f"{phrases.CANCEL_CONSUMER}")
        expect(ready == 0,
               f"Ficaram {ready} mensagem(ns) na fila '{self.queue}': toda entrega termina em basic_ack — a de um "
               f"pagamento novo depois de cobrar, a de uma duplicata sem cobrar. Sem ack, a mensagem volta quando o "
               f"canal fecha.")
        if ctx.namespace is not None:
            return  # in the kernel, run() saw every charge and ack exactly
        # deliver_get counts every delivery, acked or not, in the same sample as the acks: once it shows
        # them all, the verdict is final
        q = ctx.queue_when(self.queue, lambda q: kit.no_ack_deliveries(q)
                           or kit.stats(q).get("deliver_get", 0) >= self.deliveries)
        s, no_ack = kit.stats(q), kit.no_ack_deliveries(q)
        expect(no_ack == 0, f"{no_ack} mensagem(ns) foram entregues com auto_ack=True. {phrases.MANUAL_ACK} "
                            f"{phrases.STATS_MAY_LAG}")
        acks = s.get("ack", 0)
        expect(acks == self.deliveries,
               f"O broker registrou {acks} acks em '{self.queue}'; esperava {self.deliveries}, um por entrega "
               f"(duplicatas incluídas). {phrases.STATS_MAY_LAG}")
        redelivered = s.get("redeliver", 0)
        expect(redelivered == len(self.crashed),
               f"O broker registrou {redelivered} reentregas em '{self.queue}'; esperava {len(self.crashed)} (as duas do "
               f"consumidor que caiu): alguma entrega voltou para a fila (requeue=True, ou sem ack). "
               f"{phrases.STATS_MAY_LAG}")


# --- 7.4 ------------------------------------------------------------------------------------------

class Quarentena(Exercise):
    id = "7.4"
    title = ("Recusados e envenenados vão para a quarentena com o motivo no x-death; os sem rota, para a "
             "alternate exchange.")
    points = 3
    exchange = "pedidos"
    queue = "pedidos.novos"
    key = "novo"
    dlx = "pedidos.dlx"
    quarantine = "pedidos.quarentena"
    unroutable = "pedidos.sem_rota"
    limit = 3
    probe_cap = 8  # deliveries of the poison probe before the check gives up on a limit

    def run(self, ctx: CheckContext) -> None:
        kit.reset_topology(ctx, exchanges=[self.exchange, self.dlx, self.unroutable],
                           queues=[self.queue, self.quarantine, self.unroutable])
        with kit.learner_channel(ctx, "declarar_quarentena(channel)") as channel:
            calls = kit.record_calls(channel, *RECORDED)
            ctx.call("declarar_quarentena", channel, advice=lambda exc: _amqp_advice(exc, calls))

    # definitions ----------------------------------------------------------------------------------
    def _expect_exchange(self, ctx: CheckContext, name: str, kind: str) -> dict:
        x = ctx.management.exchange_or_none(name)
        expect(x is not None, f"A exchange '{name}' não existe: declare-a com channel.exchange_declare("
                              f"exchange='{name}', exchange_type='{kind}', durable=True{', arguments=...' if name == self.exchange else ''}).")
        expect(x.get("durable"), f"A exchange '{name}' não é durável: num reinício ela some com os seus bindings. "
                                 f"Passe durable=True (o padrão do pika é False).")
        expect(x.get("type") == kind, f"A exchange '{name}' é do tipo {x.get('type')!r}; o enunciado pede "
                                      f"exchange_type='{kind}'.")
        return x

    def _expect_bound(self, ctx: CheckContext, queue: str, exchange: str, key: str | None) -> None:
        if queue != self.queue:
            kit.expect_durable_queue(ctx, queue, "declarar_quarentena(channel)")
        bound = [b for b in kit.bindings_from(ctx, exchange) if b.get("destination") == queue]
        keys = [b.get("routing_key") for b in bound]
        expect(bound and (key is None or key in keys),
               f"A fila '{queue}' não está ligada à exchange '{exchange}'"
               f"{f' com a chave {key!r}' if key else ''} (bindings: {keys}): channel.queue_bind(queue='{queue}', "
               f"exchange='{exchange}'{f', routing_key={key!r}' if key else ''}).")

    def _expect_definitions(self, ctx: CheckContext) -> None:
        main = self._expect_exchange(ctx, self.exchange, "direct")
        alternate = (main.get("arguments") or {}).get("alternate-exchange")
        q = ctx.queue(self.queue)
        dead_on_exchange = "x-dead-letter-exchange" in (main.get("arguments") or {})
        expect(alternate is not None,
               f"A exchange '{self.exchange}' não tem alternate exchange"
               f"{' (x-dead-letter-exchange numa exchange não faz nada: é um argumento de fila)' if dead_on_exchange else ''}: "
               f"uma mensagem sem rota não é dead-lettered — ela nem chegou a uma fila —, e sem alternate exchange é "
               f"descartada. Declare '{self.exchange}' com arguments={{'alternate-exchange': '{self.unroutable}'}}.")
        expect(alternate == self.unroutable,
               f"A alternate exchange de '{self.exchange}' é {alternate!r}; o enunciado pede '{self.unroutable}'.")
        self._expect_exchange(ctx, self.unroutable, "fanout")
        self._expect_bound(ctx, self.unroutable, self.unroutable, None)
        self._expect_exchange(ctx, self.dlx, "fanout")
        self._expect_bound(ctx, self.quarantine, self.dlx, None)
        expect(q is not None, f"A fila '{self.queue}' não existe: declare-a com channel.queue_declare(queue="
                              f"'{self.queue}', durable=True, arguments={{'x-queue-type': 'quorum', ...}}).")
        expect(q.get("type") == "quorum",
               f"A fila '{self.queue}' é do tipo {q.get('type')!r}: o limite de entregas (x-delivery-limit) só existe "
               f"em filas quorum — uma fila clássica não tem limite, e uma mensagem envenenada volta para sempre. "
               f"Declare-a com arguments={{'x-queue-type': 'quorum', ...}} (apague a antiga antes: o tipo não "
               f"muda numa nova declaração).")
        arguments = q.get("arguments") or {}
        dlx = arguments.get("x-dead-letter-exchange")
        expect(dlx is not None,
               f"A fila '{self.queue}' não tem dead-letter exchange: o que for recusado com requeue=False, ou passar do "
               f"limite de entregas, é descartado. Declare-a com 'x-dead-letter-exchange': '{self.dlx}'.")
        expect(dlx == self.dlx, f"A fila '{self.queue}' manda as mensagens mortas para {dlx!r}; o enunciado pede "
                                f"'{self.dlx}'.")
        limit = arguments.get("x-delivery-limit")
        expect(limit is not None,
               f"A fila '{self.queue}' não tem x-delivery-limit: o limite padrão depende da versão (nenhum no 3.10, 20 "
               f"a partir do 4.0, e no 4.3 o basic_nack com requeue deixou de contar). Declare o limite que você quer: "
               f"'x-delivery-limit': {self.limit}.")
        expect(limit == self.limit, f"A fila '{self.queue}' tem x-delivery-limit={limit!r}; o enunciado pede "
                                    f"{self.limit}.")
        self._expect_bound(ctx, self.queue, self.exchange, self.key)

    # probes -----------------------------------------------------------------------------------------
    def verify(self, ctx: CheckContext) -> None:
        self._expect_definitions(ctx)
        good, refused, poison = "pedido 1001", "pedido 1002 (recusado)", "pedido 1003 (envenenado)"
        lost = "cancelamento 77"
        with ctx.curso.connect() as connection:
            channel = connection.channel()
            for q in (self.queue, self.quarantine, self.unroutable):
                channel.queue_purge(queue=q)
            channel.confirm_delivery()
            for body in (good, refused, poison):
                channel.basic_publish(exchange=self.exchange, routing_key=self.key, body=body,
                                      properties=kit.PERSISTENT)
            channel.basic_publish(exchange=self.exchange, routing_key="cancelado", body=lost, properties=kit.PERSISTENT)
            ready = ctx.eventually(lambda: channel.queue_declare(queue=self.queue, passive=True).method.message_count,
                                   lambda n: n >= 3, timeout=1.0)
            expect(ready == 3, f"A verificação publicou 3 pedidos na exchange '{self.exchange}' com a chave "
                               f"'{self.key}', e a fila '{self.queue}' tem {ready}.")
            poison_deliveries = 0
            deadline = time.monotonic() + 3.0
            idle_since = None
            while poison_deliveries < self.probe_cap and time.monotonic() < deadline:
                method, _props, body = channel.basic_get(queue=self.queue, auto_ack=False)
                if method is None:
                    # a quorum queue puts a returned message back in the background: gone for good only
                    # once it shows in the quarantine, or after a short look
                    idle_since = idle_since or time.monotonic()
                    dead = channel.queue_declare(queue=self.quarantine, passive=True).method.message_count
                    if dead >= 2 or time.monotonic() - idle_since > 0.5:
                        break
                    time.sleep(0.02)
                    continue
                idle_since = None
                if body.decode() == good:
                    channel.basic_ack(delivery_tag=method.delivery_tag)
                elif body.decode() == refused:
                    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
                else:
                    poison_deliveries += 1
                    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=True)
            if poison_deliveries >= self.probe_cap:
                channel.queue_purge(queue=self.queue)
        expect(poison_deliveries < self.probe_cap,
               f"'{poison}' foi recusado com requeue=True {self.probe_cap} vezes e continuou voltando para "
               f"'{self.queue}': o limite de entregas não funcionou. Com x-delivery-limit={self.limit} numa fila quorum, "
               f"a {self.limit + 1}ª devolução a manda para a dead-letter exchange.")
        expect(poison_deliveries == self.limit + 1,
               f"'{poison}' foi entregue {poison_deliveries} vez(es) antes de sair de '{self.queue}'; com "
               f"x-delivery-limit={self.limit} esperava {self.limit + 1} (a primeira entrega e {self.limit} "
               f"reentregas).")
        dead = kit.drain(ctx.curso.connect(), self.quarantine, expected=2, wait=1.5)
        by_body = {b.decode(): (getattr(p, "headers", None) or {}) for p, b in dead}
        expect(lost not in by_body,
               f"'{lost}' (publicado com uma chave sem binding) foi parar na quarentena: uma mensagem sem rota não é "
               f"dead-lettered; ela vai para a alternate exchange '{self.unroutable}'.")
        for body, reason in ((refused, "rejected"), (poison, "delivery_limit")):
            expect(body in by_body,
                   f"'{body}' saiu de '{self.queue}' ({'recusado com requeue=False' if reason == 'rejected' else 'passou do limite de entregas'}) "
                   f"e não chegou a '{self.quarantine}' (a quarentena tem {sorted(by_body)}). Confira a dead-letter "
                   f"exchange da fila e o binding da quarentena a '{self.dlx}'.")
            deaths = by_body[body].get("x-death") or []
            first = deaths[0] if deaths else {}
            expect(first.get("reason") == reason and first.get("queue") == self.queue,
                   f"'{body}' chegou à quarentena com x-death {deaths!r}; esperava reason={reason!r} e "
                   f"queue='{self.queue}'.")
        missing = kit.drain(ctx.curso.connect(), self.unroutable, expected=1)
        expect([b.decode() for _, b in missing] == [lost],
               f"A fila '{self.unroutable}' recebeu {[b.decode() for _, b in missing]}; esperava ['{lost}'], publicado na "
               f"exchange '{self.exchange}' com a chave 'cancelado', que nenhuma fila tem.")
