"""Checks for chapter 2 (Primeiros passos). Statements: solutions/02_primeiros_passos.ipynb.

What each check reads, fastest first:
- ready counts and consumers exactly, at once (`kit.exact_counts`), and message bodies and
  properties at once (`ctx.management.peek`);
- in the kernel, what only the kernel knows exactly: the pika connections left open or never
  opened (names in the namespace, BlockingConnections created during a call), how `receber`
  consumed (the channel it is handed records each consume/get, ack, nack and purge), and what its
  channel still held when it returned (a basic_get on that channel, handled after its acks and
  rejects; 2.2's bodies carry a code drawn for each run, so a hard-coded list cannot pass);
- from statistics, only what only they show, on the grader's side: ack and auto-ack counters
  (2.2, one bounded window), and the broker's list of connections, read behind a marker
  connection (`kit.connections_now`), so that a passing answer waits one collection interval at most.
"""
from __future__ import annotations

import re
import secrets

import pika
import pika.exceptions

from .. import kit, phrases
from ..checks import CheckContext, Exercise, expect


# --- 2.1 ---------------------------------------------------------------------------------------

class BoasVindas(Exercise):
    id = "2.1"
    title = "A mensagem está na fila durável, persistente, e a conexão foi fechada."
    points = 1
    queue = "boas_vindas"
    body = "Olá, RabbitMQ!"

    def run(self, ctx: CheckContext) -> None:
        kit.release_left_open()
        # The answer cell ran before this check: a connection it left open is still open now.
        left = kit.answer_cell_left_open(ctx)
        expect(left is None, f"A conexão da célula de resposta continua aberta ({left}). {self._close_hint()}")

    def verify(self, ctx: CheckContext) -> None:
        q = ctx.queue(self.queue)
        expect(q is not None, f"A fila '{self.queue}' não existe no broker. Declare-a com "
                              f"channel.queue_declare(queue='{self.queue}', durable=True).")
        expect(q.get("durable"), f"A fila '{self.queue}' existe mas não é durável: apague-a "
                                 f"(channel.queue_delete('{self.queue}')) e declare com durable=True.")
        count = (kit.exact_counts(ctx, self.queue) or (0, 0))[0]
        expect(count != 0, f"A fila '{self.queue}' está vazia. Publique com channel.basic_publish("
                           f"exchange='', routing_key='{self.queue}', body=...).")
        expect(count == 1, f"A fila '{self.queue}' tem {count} mensagens; esperava 1. Rodou a célula "
                           f"mais de uma vez? Esvazie com channel.queue_purge('{self.queue}') e publique "
                           f"uma vez só.")
        message = ctx.management.peek(self.queue, 1)[0]
        text = kit.payload_text(message)
        expect(message.get("payload_encoding") != "base64" or text == self.body,
               f"O corpo da mensagem na fila não é texto UTF-8 (lido como UTF-8 ele fica {text!r}): foi "
               f"codificado de outro jeito, como latin-1. Publique o texto em UTF-8: body={self.body!r} (o pika "
               f"codifica um str em UTF-8) ou body={self.body!r}.encode('utf-8').")
        expect(text == self.body, f"A mensagem na fila é {text!r}; esperava {self.body!r}.")
        expect(kit.is_persistent(message), f"A mensagem não é persistente: {phrases.PERSISTENT}.")
        expect(message.get("exchange", "") == "",
               f"A mensagem entrou pela exchange '{message.get('exchange')}'; o enunciado pede a exchange "
               f"padrão: channel.basic_publish(exchange='', routing_key='{self.queue}', ...), que entrega "
               f"direto na fila de nome igual à routing key, sem binding nenhum.")
        if ctx.namespace is None:
            # The grader's side: run() looked at the kernel; here the broker tells, behind a marker.
            left = kit.answer_cell_left_open(ctx)
            expect(left is None, f"A célula de resposta abriu uma conexão e não a fechou ({left}). "
                                 f"{self._close_hint()}")

    @staticmethod
    def _close_hint() -> str:
        return ("Feche-a no fim com connection.close(), ou abra-a num bloco "
                "`with pika.BlockingConnection(curso.params()) as connection:`, que fecha sozinho.")


# --- 2.2 ---------------------------------------------------------------------------------------


class Receber(Exercise):
    id = "2.2"
    title = "receber(channel, fila, n) consome exatamente n mensagens, com ack, e nunca trava."
    points = 2
    queue = "tarefas"
    n = 3
    # Second call: a queue that holds fewer than n messages.
    short_queue = "tarefas_finais"
    # Seconds receber() may take: the statement allows at most 1 s without a new message before it
    # returns; the rest is a margin for a loaded machine (a right answer takes about 1.05 s).
    limit = 2.5
    # The bodies carry a code drawn for each run, so that a hard-coded list cannot pass.
    pattern = re.compile(r"^tarefa (\d+) #([0-9a-f]+)$")
    token = None  # set by run() (kernel side); the grader's verify reads it from the queue

    def cases(self, token: str) -> list[tuple[str, list[str], list[str]]]:
        """(queue, published, what receber(channel, queue, n) must return)."""
        published = [f"tarefa {i} #{token}" for i in range(1, 6)]
        short = [f"tarefa {i} #{token}" for i in (6, 7)]
        return [(self.queue, published, published[: self.n]), (self.short_queue, short, short)]

    def run(self, ctx: CheckContext) -> None:
        kit.release_left_open()
        self.token = secrets.token_hex(2)
        for queue, bodies, _ in self.cases(self.token):
            kit.fresh_queue(ctx, queue, bodies)
        for queue, bodies, wanted in self.cases(self.token):
            self._receive(ctx, queue, bodies, wanted)

    def _receive(self, ctx: CheckContext, queue: str, bodies: list[str], wanted: list[str]) -> None:
        call = f"receber(channel, '{queue}', {self.n})"
        connection = ctx.curso.connect()
        try:
            channel = connection.channel()
            calls = kit.record_calls(channel, "consume", "basic_consume", "queue_purge", "queue_delete")
            log = kit.observe_channel(channel)
            result = ctx.call("receber", channel, queue, self.n, timeout=self.limit,
                              on_timeout=lambda: self._hang_hint(ctx, call, queue, len(bodies), log))
            # Exact, while receber's channel is still open: what is ready, and is a consumer attached?
            during = _counts_after(ctx, channel, queue)
        finally:
            # Closing the connection returns whatever receber() took but did not ack, at once; only
            # then does the exact ready count show what receber() really consumed.
            kit.close_quietly(connection)
        expect(not any(arguments.get("auto_ack") for _, arguments in calls if "auto_ack" in arguments)
               and not any(get.get("auto_ack") for get in log.gets),
               f"{call} consumiu com auto_ack=True: o broker apaga a mensagem ao entregá-la, e ela se "
               f"perde se o programa cair antes de processá-la. {phrases.MANUAL_ACK}")
        emptied = sorted({method for method, arguments in calls
                          if method in ("queue_purge", "queue_delete") and arguments.get("queue") == queue})
        expect(not emptied,
               f"{call} chamou channel.{' e channel.'.join(emptied)}('{queue}'): isso descarta as mensagens "
               f"sem entregá-las a ninguém. receber() deve consumi-las (consume ou basic_get), confirmar cada "
               f"uma com basic_ack e devolver os corpos que recebeu.")
        expect(during is not None, phrases.queue_missing(queue))
        expect(not during[1],
               f"Depois que {call} voltou, a fila '{queue}' ainda tinha {during[1]} consumidor(es) "
               f"ligado(s) ao canal, segurando sem ack as mensagens que o broker já tinha mandado a mais "
               f"(na fila, prontas, havia só {during[0]}). {phrases.CANCEL_CONSUMER}")
        ready = (kit.exact_counts(ctx, queue) or (0, 0))[0]
        consumed = len(bodies) - ready
        expect(isinstance(result, list), f"{call} deveria devolver uma lista, devolveu {type(result).__name__}.")
        expect(all(isinstance(x, str) for x in result),
               f"{call} deveria devolver textos (str): use body.decode() em cada mensagem.")
        expect(consumed <= len(wanted),
               f"Depois de {call}, a fila '{queue}' ficou com {ready} mensagem(ns); deveriam sobrar "
               f"{len(bodies) - len(wanted)}. receber() consumiu {consumed}: deve parar em n (nem uma a mais).")
        held = ready - during[0]  # taken without ack, back in the queue once the connection closed
        expect(consumed != len(wanted) or not held,
               f"Depois que {call} voltou, o canal ainda segurava, sem ack, {held} mensagem(ns) que ela pegou "
               f"além das {len(wanted)} que confirmou: com o canal aberto, a fila tinha {during[0]} pronta(s), e "
               f"deveria ter {ready}. Uma mensagem que o for já entregou e que você não confirma nem rejeita fica "
               f"presa no canal até ele fechar. Pare assim que tiver n: teste len(corpos) == n logo depois de "
               f"guardar uma, antes de pedir a próxima ao for.")
        expect(consumed == len(wanted) or not held,
               f"Depois de {call}, voltaram para a fila '{queue}' {held} mensagem(ns) que receber() "
               f"pegou e não confirmou (sem ack, elas voltam quando a conexão fecha). {phrases.MANUAL_ACK}")
        expect(consumed == len(wanted),
               f"Depois de {call}, a fila '{queue}' continua com {ready} de {len(bodies)} mensagens: "
               f"receber() consumiu {consumed}, e deveria consumir {len(wanted)}. Ela precisa tirar as "
               f"mensagens da fila (consume ou basic_get) e confirmar cada uma.")
        expect(result == wanted, f"{call} devolveu {result!r}; esperava {wanted!r}" +
               (f" (as {self.n} primeiras, na ordem; o código depois de # muda a cada verificação)."
                if len(wanted) == self.n else
                f" (a fila tinha só {len(bodies)}: receber() devolve as que recebeu)."))

    def _hang_hint(self, ctx: CheckContext, call: str, queue: str, available: int, log) -> str:
        head = f"{call} não voltou em {self.limit:.1f} s (a fila tinha {available} mensagem(ns))."
        requeued = [r for r in log.rejects if r.get("requeue")]
        if requeued:
            return (f"{head} Ela devolveu mensagens à fila {len(requeued)} vez(es) com basic_nack/basic_reject"
                    f"(requeue=True), e o broker as entrega de novo, sem fim: com requeue=True a mensagem volta "
                    f"para a fila e o consume a recebe outra vez, então nunca passa 1 s sem mensagem nova. Pare "
                    f"(break) ao chegar a n, sem pedir a próxima; as que o broker já tinha mandado a mais, o "
                    f"channel.cancel() devolve à fila.")
        redelivered = kit.stats(ctx.queue(queue)).get("redeliver", 0)
        if redelivered > available:
            return (f"{head} O broker registrou {redelivered} reentregas na fila '{queue}': as mensagens voltam "
                    f"para a fila (requeue=True) e são entregues de novo, sem fim. Pare (break) ao chegar a n, sem "
                    f"pedir a próxima. {phrases.STATS_MAY_LAG}")
        if available < self.n:
            return (f"{head} Quando a fila acaba antes de n, receber() deve devolver as que recebeu depois de no "
                    f"máximo 1 s sem mensagem nova: use channel.consume(fila, inactivity_timeout=1) e pare quando "
                    f"vier (None, None, None). Sem inactivity_timeout o for espera mensagens para sempre; com um "
                    f"valor maior, espera mais que 1 s.")
        return (f"{head} Pare de consumir assim que tiver n mensagens: channel.consume(...) com break ao chegar "
                f"a n, ou basic_get n vezes. start_consuming() sozinho nunca volta.")

    def verify(self, ctx: CheckContext) -> None:
        records = {}
        token = self.token
        if token is None:  # the grader's side: the code of this run is in the bodies left in the queue
            left = ctx.bodies(self.queue, 1)
            match = self.pattern.match(left[0]) if left else None
            token = match.group(2) if match else "?"
        for queue, bodies, wanted in self.cases(token):
            ready, _ = kit.counts_of(ctx, queue)
            rest = bodies[len(wanted):]
            expect(ready == len(rest),
                   f"A fila '{queue}' ficou com {ready} mensagem(ns) pronta(s); deveriam sobrar "
                   f"{len(rest)} depois de receber(channel, '{queue}', {self.n}), que deve consumir e "
                   f"confirmar só {len(wanted)}.")
            remaining = sorted(ctx.bodies(queue, len(rest) + 1))
            expect(remaining == rest, f"Sobraram {remaining!r} na fila '{queue}'; deveriam sobrar {rest!r}.")
            records[queue] = len(wanted)
        if ctx.namespace is not None:
            return  # in the kernel, run() saw exactly how receber() consumed and acked
        # The grader's side: acks and auto-acks are only in the statistics. One bounded window,
        # which ends as soon as every ack (or any auto-ack) shows.
        seen = ctx.eventually(
            lambda: {q: ctx.queue(q) for q in records},
            lambda rs: any(kit.no_ack_deliveries(r) for r in rs.values())
            or all(kit.stats(rs[q]).get("ack", 0) >= n for q, n in records.items()))
        for queue, n in records.items():
            no_ack = kit.no_ack_deliveries(seen[queue])
            expect(not no_ack, f"{no_ack} mensagem(ns) da fila '{queue}' foram entregues com auto_ack=True: o "
                               f"broker as apaga ao entregar, e elas se perdem se o programa cair. "
                               f"{phrases.MANUAL_ACK} {phrases.STATS_MAY_LAG}")
            acks = kit.stats(seen[queue]).get("ack", 0)
            expect(acks >= n, f"O broker registrou {acks} ack(s) na fila '{queue}'; esperava {n}: as mensagens "
                              f"devem ser consumidas e confirmadas (basic_ack), não descartadas com queue_purge. "
                              f"{phrases.MANUAL_ACK} {phrases.STATS_MAY_LAG}")


def _counts_after(ctx: CheckContext, channel, queue: str) -> tuple[int, int] | None:
    """(ready, consumers) of `queue` right after the learner's call, exact, on the learner's own
    channel while it is open. The consumer count comes from a passive declare (a cancel is
    synchronous: once it returned, the consumer is gone). The ready count does not: the queue answers
    a passive declare ahead of the requeues it has not handled yet (its `stat` call jumps the
    queue), so a message that channel.cancel() just rejected back could be missed. A basic_get on the
    same channel is handled in order, after every ack and reject the call sent: its message_count
    (plus the message it takes, which goes back when the check closes the connection) is exact.
    On a fresh connection if the learner closed the channel. None if the queue does not exist."""
    if channel.is_open:
        try:
            consumers = channel.queue_declare(queue=queue, passive=True).method.consumer_count
            method, _properties, _body = channel.basic_get(queue=queue, auto_ack=False)
            return (method.message_count + 1 if method is not None else 0), consumers
        except pika.exceptions.ChannelClosedByBroker:
            return None
        except pika.exceptions.AMQPError:
            pass  # a channel the learner's code broke: ask on a connection of the check's own
    return kit.exact_counts(ctx, queue)


# --- 2.3 ---------------------------------------------------------------------------------------

class FecharConexao(Exercise):
    id = "2.3"
    title = "publicar_todas() publica tudo e fecha a conexão que abriu, mesmo com erro."
    points = 2
    queue = "registro"
    messages = ["entrada 1", "entrada 2", "entrada 3"]
    broken = ["entrada 1", None]  # the second publish fails inside pika (the body is not text)

    def snapshot(self, ctx: CheckContext) -> None:
        self.before = kit.connection_names(ctx)

    def run(self, ctx: CheckContext) -> None:
        kit.release_left_open()
        fn = ctx.learner("publicar_todas")
        shared = kit.open_in(ctx.namespace, kit.globals_used(fn))
        expect(not shared,
               f"publicar_todas() usa {kit.names_list(shared)}, de uma conexão aberta fora dela (e que continua "
               f"aberta). O enunciado pede que a função abra a sua própria conexão e a feche antes de voltar: "
               f"`with pika.BlockingConnection(curso.params()) as connection:` dentro da função.")
        # Something goes wrong in the middle: the error may escape, the connection must be closed.
        ctx.management.delete_queue(self.queue)
        with kit.watch_connections() as left_on_error:
            try:
                ctx.call("publicar_todas", list(self.broken))
            except AssertionError:
                pass  # the learner's exception, as expected (a missing function fails the call below)
        ctx.management.delete_queue(self.queue)
        with kit.watch_connections() as left:
            ctx.call("publicar_todas", list(self.messages))
        expect(left.created,
               "publicar_todas() não abriu conexão nenhuma: publicou por uma conexão aberta fora dela. O "
               "enunciado pede que a função abra a sua própria conexão e a feche antes de voltar: "
               "`with pika.BlockingConnection(curso.params()) as connection:` dentro da função.")
        expect(not left, f"publicar_todas() deixou uma conexão aberta. {phrases.CLOSE_CONNECTION}")
        expect(not left_on_error,
               f"Quando um basic_publish falhou no meio (chamei publicar_todas({self.broken!r}): None não é "
               f"texto), publicar_todas() deixou a conexão aberta. Com "
               f"`with pika.BlockingConnection(curso.params()) as connection:` ela é fechada mesmo quando "
               f"uma exceção escapa do bloco (um connection.close() no fim não roda nesse caso).")

    def verify(self, ctx: CheckContext) -> None:
        try:
            kit.expect_durable_queue(ctx, self.queue, "publicar_todas()")
        except AssertionError as exc:
            if ctx.queue(self.queue) is None:  # declared exclusive=True: gone with the function's connection
                raise AssertionError(f"{exc} (Uma fila declarada com exclusive=True some quando a conexão que a "
                                     f"declarou fecha, e publicar_todas() fecha a sua.)") from None
            raise
        count = (kit.exact_counts(ctx, self.queue) or (0, 0))[0]
        expect(count == len(self.messages),
               f"A fila '{self.queue}' tem {count} mensagens; esperava {len(self.messages)} (uma por item da lista).")
        peeked = ctx.management.peek(self.queue, len(self.messages))
        bodies = [m.get("payload") for m in peeked]
        expect(bodies == self.messages, f"As mensagens na fila são {bodies!r}; esperava {self.messages!r}, nessa ordem.")
        expect(all(kit.is_persistent(m) for m in peeked),
               f"As mensagens não são persistentes: {phrases.PERSISTENT}.")
        if ctx.namespace is None:
            # The grader's side: run() counted the kernel's open connections exactly; here the
            # broker tells, behind a marker (connections opened since the snapshot, still open).
            leaked = kit.connections_now(ctx) - self.before
            expect(not leaked, f"O broker ainda mostra {len(leaked)} conexão(ões) aberta(s) por "
                               f"publicar_todas(). {phrases.CLOSE_CONNECTION}")
