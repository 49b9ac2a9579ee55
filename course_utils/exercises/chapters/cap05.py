"""Checks for chapter 5 (Consumidores). Statements: solutions/05_consumidores.ipynb.

5.1 and 5.3 declare their queue with a dead-letter exchange (the default exchange, routing to a
second queue): what the learner rejects with requeue=False lands there with an `x-death` header that
says it was rejected from the exercise's queue. So the broker itself keeps exact evidence of which
messages were rejected, readable at once, and `verify` needs statistics only for what nothing else
shows (ack, no-ack and redeliver counters), and reads them on the grader's side only.

In the kernel, `PikaWatch` watches how the learner's code uses pika during the call (public API
only, patched on the classes for the duration of the call and restored afterwards): which thread
created each connection, the consumers and their auto_ack, every ack/nack/reject and the message
it settled. That makes the kernel-side hints exact and instant, and it performs an ack/nack/reject
made from the wrong thread safely (through `add_callback_threadsafe`), so that a thread-unsafe
answer fails with a hint about threads every time instead of corrupting pika's internals.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pika
import pika.exceptions

from .. import kit, phrases
from ..checks import CheckContext, Exercise, expect
from ..pikawatch import PikaWatch, call_watched

# pt-BR advice for the AMQP errors a learner's code of this chapter typically provokes, by a piece
# of the broker's reply text.
AMQP_ADVICE = {
    "inequivalent arg": ("Não declare a fila de novo com outros argumentos — a verificação já a criou "
                         "(com uma dead-letter exchange). Se quiser conferir que ela existe, use "
                         "queue_declare(queue=..., passive=True)."),
    "unknown delivery tag": ("Cada entrega só pode ser confirmada ou recusada uma vez, e pelo mesmo canal "
                             "que a entregou (a delivery tag só existe nele)."),
}
CHANNEL_WAS_CLOSED = ("O canal já estava fechado: o broker o fecha (406 PRECONDITION_FAILED - unknown "
                      "delivery tag) quando uma entrega é confirmada duas vezes, ou por um canal que não foi "
                      "o que a entregou. Confirme cada mensagem uma só vez, no canal que a entregou.")

def _amqp_advice(exc: BaseException) -> str | None:
    """The chapter's extra sentence for an AMQP error that escaped the learner's code."""
    sentence = kit.advice_in(AMQP_ADVICE, exc)
    if sentence:
        return sentence
    if isinstance(exc, pika.exceptions.ChannelWrongStateError):
        return CHANNEL_WAS_CLOSED
    return None


# --- reading the broker ------------------------------------------------------------------------------

def _x_death_from(message: dict, queue: str) -> bool:
    """A message read through the management API was dead-lettered from `queue` by a reject/nack."""
    headers = (message.get("properties") or {}).get("headers") or {}
    return any(d.get("queue") == queue and d.get("reason") == "rejected" for d in headers.get("x-death") or [])


def _dead_lettered(ctx: CheckContext, dead: str, source: str, expected: int) -> list[str] | None:
    """Bodies in `dead` that the broker dead-lettered from `source` (x-death: rejected), or None if
    `dead` is gone. Exact: a passive declare and the management API's peek, no statistics. The
    broker moves a rejected message in the background; a short look gives it the time if the count
    is still short."""
    counts = ctx.eventually(lambda: kit.exact_counts(ctx, dead), lambda c: c is None or c[0] >= expected,
                            timeout=0.2)
    if counts is None:
        return None
    messages = ctx.management.peek(dead, counts[0] + 1) if counts[0] else []
    return [m.get("payload", "") if _x_death_from(m, source)
            else f"{m.get('payload', '')} (publicada direto, não recusada)" for m in messages]


# 5.1 ---------------------------------------------------------------------------------------------
def _why_invalid(body: str) -> str | None:
    """Why an order is invalid (pt-BR), or None if it is valid."""
    try:
        pedido = json.loads(body)
    except ValueError:
        return "não é JSON"
    if not isinstance(pedido, dict):
        return "não é um objeto JSON"
    if "quantidade" not in pedido:
        return "não tem o campo quantidade"
    q = pedido["quantidade"]
    if isinstance(q, bool):
        return f"quantidade {json.dumps(q)} é um booleano (bool), não um inteiro"
    if not isinstance(q, int):
        return f"quantidade {json.dumps(q)} não é um inteiro do JSON ({type(q).__name__})"
    if q <= 0:
        return f"quantidade {q} não é maior que zero"
    return None


class PedidosValidos(Exercise):
    id = "5.1"
    title = "processar_pedidos() confirma os pedidos válidos e rejeita os inválidos sem devolvê-los à fila."
    points = 2
    queue = "pedidos"
    dead = "pedidos_invalidos"
    # A right answer needs ~3.5 s: the last batch at 2.4 s, then 1 s of silence. The batches come
    # 0.6 s apart, so that stopping after a fixed count or a fixed 2 s window misses the last ones.
    call_timeout = 6.0
    early = [  # published before the call
        '{"pedido": 101, "quantidade": 2}',
        '{"pedido": 102, "quantidade": 1}',
        "isto não é JSON",
        '{"pedido": 103, "quantidade": 0}',
        '{"pedido": 104, "quantidade": 5}',
        '{"pedido": 105}',
        '{"pedido": 106, "quantidade": true}',
    ]
    batches = [  # (seconds into the call, bodies) published while the learner's loop runs
        (0.6, ['{"pedido": 107, "quantidade": 3}', '[108, 2]']),
        (1.2, ['{"pedido": 109, "quantidade": 2.5}', '{"pedido": 110, "quantidade": "2"}',
               '{"pedido": 111, "quantidade": 4}']),
        (1.8, ['{"pedido": 112, "quantidade": 1}']),
        (2.4, ['{"pedido": 113, "quantidade": -1}', '{"pedido": 114, "quantidade": 2}']),
    ]

    @property
    def late(self) -> list[str]:
        return [b for _, bodies in self.batches for b in bodies]

    @property
    def messages(self) -> list[str]:
        return self.early + self.late

    @property
    def valid(self) -> list[int]:
        return [json.loads(b)["pedido"] for b in self.messages if _why_invalid(b) is None]

    @property
    def invalid(self) -> list[str]:
        return [b for b in self.messages if _why_invalid(b) is not None]

    def _explain(self, bodies) -> str:
        return "; ".join(f"{kit.shown([b])} ({_why_invalid(b.decode() if isinstance(b, bytes) else b) or 'válido'})"
                         for b in bodies)

    def run(self, ctx: CheckContext) -> None:
        kit.fresh_queue(ctx, self.dead)
        watch = PikaWatch()
        check = kit.CheckConnection(ctx)
        connection = check.connection
        watch.adopt(connection)
        try:
            channel = connection.channel()
            kit.fresh_queue(ctx, self.queue, self.early, arguments=kit.dead_letter_to(self.dead), channel=channel)
            closes = kit.record_calls(channel, "close")
            with kit.LatePublisher(ctx, self.queue, [(at, [(body, kit.PERSISTENT) for body in bodies])
                                                     for at, bodies in self.batches]) as publisher:
                watch.on_event = lambda what, detail: self._decided(what, detail) and publisher.hurry()
                result = call_watched(ctx, watch, "processar_pedidos", channel, self.queue,
                                       advice=_amqp_advice, on_timeout=lambda: self._on_timeout(ctx, watch),
                                       timeout=self.call_timeout)
            channel_hint = kit.handed_channel_hint("processar_pedidos", channel, closes, CHANNEL_WAS_CLOSED)
            # Still open: a consumer left registered shows in a passive declare, exactly.
            counts = kit.exact_counts(ctx, self.queue)
        finally:
            # Closing returns whatever was delivered and not settled: only then does the queue show
            # what processar_pedidos() really did.
            check.close()

        hint = watch.thread_hint("processar_pedidos")
        expect(hint is None, hint)
        expect(channel_hint is None, channel_hint)
        expect(watch.consumers, "processar_pedidos() não registrou nenhum consumidor. Registre-o com "
                                "tag = channel.basic_consume(queue=fila, on_message_callback=callback) e rode o "
                                "laço com channel.connection.process_data_events(time_limit=...).")
        expect(any(how == "basic_consume" for how, _ in watch.consumers),
               f"processar_pedidos() consumiu com {watch.consumers[0][0]}(), mas este exercício é sobre o "
               f"consumidor com callback: registre-o com channel.basic_consume(queue=fila, "
               f"on_message_callback=callback) e rode o laço com channel.connection.process_data_events(...).")
        expect(not watch.started_consuming,
               "processar_pedidos() rodou o laço com start_consuming(), que só para quando alguém chama "
               "stop_consuming(): este exercício pede o laço com channel.connection.process_data_events("
               "time_limit=...) num while, que para depois de 1 s sem mensagem nova.")
        expect(not watch.auto_ack(),
               f"O consumidor foi registrado com auto_ack=True: o broker apaga cada mensagem ao entregá-la, e as "
               f"inválidas não podem mais ser recusadas. {phrases.MANUAL_ACK}")
        requeued = watch.requeued()
        example = next((kit.shown(s.bodies[:1]) for s in requeued if s.bodies), "uma entrega")
        expect(not requeued,
               f"processar_pedidos() devolveu mensagens à fila com requeue=True ({len(requeued)} vez(es), por "
               f"exemplo {example}): uma mensagem inválida volta, é "
               f"recusada de novo, volta... sem fim, e nunca fica válida. Recuse-a com "
               f"ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False).")
        delivered = set(watch.deliveries.values())
        missed = next(((at, [b for b in bodies if b.encode() not in delivered]) for at, bodies in self.batches
                       if any(b.encode() not in delivered for b in bodies)), None)
        expect(missed is None,
               f"processar_pedidos() voltou cedo demais: os pedidos publicados {phrases.decimal(missed and missed[0])} s "
               f"depois de a função começar ({kit.shown(missed[1] if missed else [])}) não foram entregues ao seu "
               f"consumidor — o seu laço já tinha parado. Os pedidos chegam em lotes, com menos de 1 s entre um "
               f"lote e o seguinte: não pare depois de um número fixo de mensagens nem de um tempo fixo. Uma fila "
               f"de verdade recebe mensagens enquanto você consome: rode process_data_events(time_limit=...) num "
               f"while até passar 1 s sem mensagem nova (guarde no callback a hora da última mensagem).")
        expect(counts is None or counts[1] == 0,
               "Depois que processar_pedidos() voltou, o consumidor continuava registrado na fila "
               f"'{self.queue}' (o broker ainda mostrava {counts and counts[1]} consumidor): o broker continua "
               "entregando mensagens a ele, que ficam presas sem ack até o canal fechar. Antes de voltar, "
               "cancele-o com channel.basic_cancel(tag), usando a tag que basic_consume devolveu.")

        outcomes = watch.outcomes()
        by_body = {b: outcomes.get(b.encode(), []) for b in self.messages}
        acked_invalid = [b for b in self.invalid if "ack" in by_body[b]]
        expect(not acked_invalid,
               f"Você confirmou (basic_ack) pedidos inválidos: {self._explain(acked_invalid)}. Válido é um objeto "
               f"JSON cuja quantidade é um inteiro do JSON maior que zero (em Python: isinstance(q, int) and not "
               f"isinstance(q, bool) and q > 0); os outros se recusam com requeue=False.")
        rejected_valid = [b for b in self.messages if b not in self.invalid and "reject" in by_body[b]]
        expect(not rejected_valid, f"Você recusou pedidos válidos: {self._explain(rejected_valid)}. Esses se "
                                   f"confirmam com ch.basic_ack(delivery_tag=method.delivery_tag).")
        unsettled = [b for b in self.messages if not by_body[b] and b.encode() in delivered]
        expect(not unsettled, f"{len(unsettled)} mensagens foram entregues e nem confirmadas nem recusadas "
                              f"({kit.shown(unsettled[:3])}{'...' if len(unsettled) > 3 else ''}): voltaram para a "
                              f"fila quando a conexão fechou. Toda entrega precisa de um basic_ack (válidas) ou "
                              f"de um basic_reject(..., requeue=False) (inválidas).")
        expect(isinstance(result, list),
               f"processar_pedidos() deveria devolver uma lista, devolveu {type(result).__name__}.")
        returned_invalid = [b for b in self.invalid if b.startswith("{") and json.loads(b).get("pedido") in result]
        expect(not returned_invalid, f"processar_pedidos() devolveu {result!r}, com números de pedidos inválidos: "
                                     f"{self._explain(returned_invalid)}.")
        expect(result == self.valid,
               f"processar_pedidos() devolveu {result!r}; esperava {self.valid!r}: os números (campo 'pedido') "
               f"dos pedidos válidos, na ordem em que chegaram.")

    def _decided(self, what: str, detail) -> bool:
        """The learner's code just did something that fails the check whatever comes next: then the
        late batches need not keep to their timing (a failing check should not wait for it)."""
        if what == "start_consuming":
            return True
        if what == "consume":
            how, auto_ack = detail
            return auto_ack or how != "basic_consume"
        if detail.requeue:
            return True
        for body in detail.bodies:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
            if (_why_invalid(text) is None) != (detail.kind == "basic_ack"):
                return True
        return False

    def _on_timeout(self, ctx: CheckContext, watch: PikaWatch) -> str:
        requeued = watch.requeued()
        redelivered = kit.stats(ctx.queue(self.queue)).get("redeliver", 0)
        if requeued or redelivered:
            return (f"`processar_pedidos` não terminou em {self.call_timeout:.0f} s: ela devolveu mensagens à "
                    f"fila com requeue=True {len(requeued)} vez(es). É um laço sem fim: a mensagem inválida volta, "
                    f"é recusada de novo, volta... e nunca passa 1 s sem mensagem nova. O broker registrou "
                    f"{redelivered} reentregas. {phrases.STATS_MAY_LAG} Recuse as inválidas com "
                    f"ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False): uma mensagem inválida "
                    f"nunca vai ficar válida.")
        return (f"`processar_pedidos` não terminou em {self.call_timeout:.0f} s. Rode "
                f"process_data_events(time_limit=...) num while que para depois de 1 s sem mensagem nova (guarde no "
                f"callback a hora da última mensagem); start_consuming() espera mensagens para sempre.")

    def verify(self, ctx: CheckContext) -> None:
        n = len(self.messages)
        ready, consumers = kit.counts_of(ctx, self.queue)
        expect(consumers == 0, f"Ainda há {consumers} consumidor(es) registrado(s) na fila '{self.queue}': "
                               f"cancele o consumidor (channel.basic_cancel(tag)) e feche o que abrir.")
        if ready:
            s = kit.stats(ctx.queue(self.queue))  # one look, no wait: only to word the hint
            if s.get("redeliver", 0) > n:
                why = (f"o broker registrou {s['redeliver']} reentregas: você devolveu "
                       f"mensagens à fila (requeue=True, o padrão do basic_nack). Uma mensagem inválida nunca vai "
                       f"ficar válida: recuse-a com ch.basic_reject(delivery_tag=..., requeue=False). "
                       f"{phrases.STATS_MAY_LAG}")
            else:
                why = ("foram entregues e não confirmadas nem recusadas (voltaram quando a conexão fechou), ou "
                       "nem chegaram a ser consumidas: toda entrega precisa de um basic_ack (válidas) ou de um "
                       "basic_reject(..., requeue=False) (inválidas), e o laço só para depois de 1 s sem "
                       "mensagem nova.")
            expect(False, f"Ficaram {ready} de {n} mensagens na fila '{self.queue}': {why}")
        rejected = _dead_lettered(ctx, self.dead, self.queue, len(self.invalid))
        expect(rejected is not None, phrases.queue_missing(self.dead))
        expect(sorted(rejected) == sorted(self.invalid),
               f"A fila '{self.dead}' (para onde o broker manda o que você recusa com requeue=False) tem "
               f"{sorted(rejected)!r}; esperava exatamente as {len(self.invalid)} mensagens inválidas "
               f"{sorted(self.invalid)!r}.")
        if ctx.namespace is not None:
            return  # in the kernel, run() saw every ack exactly; the counters are the grader's evidence
        q = ctx.queue_when(self.queue, lambda q: kit.no_ack_deliveries(q)
                           or kit.stats(q).get("ack", 0) >= len(self.valid))
        s, no_ack = kit.stats(q), kit.no_ack_deliveries(q)
        expect(no_ack == 0, f"{no_ack} mensagens foram entregues com auto_ack=True: o "
                            f"broker as apagou ao entregar. {phrases.MANUAL_ACK} {phrases.STATS_MAY_LAG}")
        acks = s.get("ack", 0)
        expect(acks == len(self.valid),
               f"O broker registrou {acks} ack(s) na fila '{self.queue}'; esperava "
               f"{len(self.valid)}, um por pedido válido. {phrases.STATS_MAY_LAG}")


# 5.2 ---------------------------------------------------------------------------------------------
class _Recorder:
    """The `processar` the check hands to the learner: records who processed what, when each call
    ended, and how many ran at once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.calls: list[tuple[object, threading.Thread]] = []
        self.finished: list[float] = []
        self.active = 0
        self.peak = 0

    def __call__(self, corpo) -> None:
        with self.lock:
            self.calls.append((corpo, threading.current_thread()))
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.seconds)
        finally:
            with self.lock:
                self.active -= 1
                self.finished.append(time.monotonic())  # before returning: an ack after it is later


class EmParalelo(Exercise):
    id = "5.2"
    title = "consumir_em_paralelo() processa tudo uma vez, em várias threads, com ack no canal certo."
    points = 3
    queue = "trabalhos"
    count = 24
    k = 4
    work_seconds = 0.1
    call_timeout = 10.0

    @property
    def bodies(self) -> list[str]:
        return [f"trabalho {i:02d}" for i in range(1, self.count + 1)]

    def snapshot(self, ctx: CheckContext) -> None:
        self.before = kit.connection_names(ctx)

    def run(self, ctx: CheckContext) -> None:
        kit.fresh_queue(ctx, self.queue, self.bodies)
        recorder = _Recorder(self.work_seconds)
        watch = PikaWatch()
        threads_before = set(threading.enumerate())
        connections_before = kit.open_connections()
        try:
            call_watched(ctx, watch, "consumir_em_paralelo", self.queue, self.k, recorder, advice=_amqp_advice)
        finally:
            left = self._stray_threads(threads_before)
        names = ", ".join(t.name for t in left[:4])

        hint = watch.thread_hint("consumir_em_paralelo")
        expect(hint is None, hint)
        expect(not left, f"consumir_em_paralelo() voltou deixando {len(left)} thread(s) rodando ({names}). Espere "
                         f"cada uma terminar (thread.join(), ou pool.shutdown(wait=True)) antes de voltar.")
        expect(not watch.auto_ack(),
               f"consumir_em_paralelo() consumiu com auto_ack=True: o broker apaga cada mensagem ao entregá-la, "
               f"antes de qualquer processamento (e, sem acks pendentes, ignora o prefetch e empurra tudo para o "
               f"primeiro consumidor). {phrases.MANUAL_ACK}")
        expect(watch.consumers, "consumir_em_paralelo() não consumiu a fila: nenhum basic_consume, consume() ou "
                                "basic_get. Cada mensagem processada precisa vir da fila (e ser confirmada depois).")
        with recorder.lock:
            calls = list(recorder.calls)
            finished = list(recorder.finished)
            peak = recorder.peak
        expect(calls, "processar nunca foi chamada. Para cada mensagem consumida, chame processar(corpo) numa "
                      "thread trabalhadora e só depois confirme a mensagem. (Lembre: basic_consume só registra o "
                      "consumidor; alguém precisa rodar o laço que entrega as mensagens.)")
        expect(all(isinstance(c, str) for c, _ in calls),
               "processar deve receber o corpo como texto (str): use body.decode().")
        seen = Counter(c for c, _ in calls)
        twice = sorted(c for c, n in seen.items() if n > 1)
        delivered = Counter(b.decode("utf-8", "replace") if isinstance(b, bytes) else b
                            for b in list(watch.deliveries.values()))
        extra = [c for c in twice if seen[c] > delivered[c]]
        first = extra[0] if extra else ""
        expect(not extra, f"processar foi chamada mais de uma vez para a mesma entrega: {len(extra)} mensagem(ns) "
                          f"foram processadas mais vezes do que o broker as entregou (por exemplo {first!r}: "
                          f"{seen[first]} chamadas de processar, {delivered[first]} entrega(s)"
                          f"{'; não houve reentrega' if delivered[first] == 1 else ''}). Chame processar(corpo) "
                          f"exatamente uma vez por entrega, e confirme-a depois.")
        expect(not twice, f"{len(twice)} mensagem(ns) foram processadas mais de uma vez ({twice[:3]}...), e o "
                          f"broker as entregou mais de uma vez: isso acontece quando o ack se perde (canal fechado "
                          f"por um ack duplicado ou feito no canal errado) e o broker reentrega a mensagem.")
        ahead = kit.settled_early(watch.settles, finished)
        expect(not ahead, f"consumir_em_paralelo() confirmou mensagens antes de processar voltar (em algum "
                          f"momento, {ahead} ack(s) à frente das chamadas de processar já terminadas). Se o "
                          f"programa cair no meio do trabalho, uma mensagem confirmada antes de processar se perde: "
                          f"chame basic_ack só depois que processar(corpo) voltar.")
        foreign = [s for s in watch.settles if not s.known]
        expect(not foreign, f"consumir_em_paralelo() confirmou {len(foreign)} entrega(s) num canal que não as "
                            f"entregou: a delivery tag só vale no canal que entregou a mensagem (em outro, o broker "
                            f"fecha o canal com 406 'unknown delivery tag'). Confirme no canal que a entregou — de "
                            f"outra thread, por connection.add_callback_threadsafe(...).")
        expect(watch.settles, "Nenhuma mensagem foi confirmada: com auto_ack=False, cada uma precisa de "
                              "ch.basic_ack(delivery_tag=method.delivery_tag) depois que processar voltar; sem "
                              "acks, cada consumidor recebe até o limite do prefetch e para.")
        not_acks = Counter(s.kind for s in watch.settles if s.kind != "basic_ack")
        expect(not not_acks, f"consumir_em_paralelo() recusou mensagens ({dict(not_acks)}) em vez de confirmá-las: "
                             f"depois que processar voltar, confirme com ch.basic_ack(delivery_tag=...).")
        missing = [b for b in self.bodies if b not in seen]
        expect(not missing, f"{len(missing)} de {self.count} mensagens nunca foram processadas ({missing[:3]}...). "
                            f"Consuma até a fila esvaziar (pare depois de ~1 s sem mensagens novas) e confirme cada "
                            f"uma no canal que a entregou: um consumidor cujos acks não chegam recebe até o limite "
                            f"do prefetch e para.")
        expect(peak > 1,
               f"{len({t for _, t in calls})} thread(s) processaram mensagens, mas nunca duas ao mesmo tempo: o "
               f"trabalho não foi feito em paralelo. Use {self.k} threads (uma conexão por thread, criada nela, com "
               f"basic_qos(prefetch_count=1); ou um pool de threads trabalhadoras que confirma com "
               f"connection.add_callback_threadsafe(...)).")
        expect(peak <= self.k, f"Houve {peak} chamadas de processar ao mesmo tempo; k = {self.k} é o limite: use "
                               f"{self.k} threads trabalhadoras (ou ThreadPoolExecutor(max_workers=k)).")
        leaked = kit.open_connections() - connections_before
        expect(not leaked, f"consumir_em_paralelo() deixou {len(leaked)} conexão(ões) aberta(s). "
                           f"{phrases.CLOSE_CONNECTION} Numa thread: `with pika.BlockingConnection(curso.params()) as "
                           f"connection:` dentro dela.")

    def _stray_threads(self, before: set) -> list[threading.Thread]:
        """Threads the learner's call started and left running; waits (bounded) for them so that they
        do not meddle with what comes next."""
        deadline = time.monotonic() + 1.0  # a thread that was joined may take a moment to vanish
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [t for t in left if t.is_alive()]
        for t in left:
            t.join(timeout=max(0.0, deadline + self.call_timeout - time.monotonic()))
        return left

    def verify(self, ctx: CheckContext) -> None:
        ready, consumers = kit.counts_of(ctx, self.queue)
        expect(consumers == 0, f"Ainda há {consumers} consumidor(es) registrado(s) na fila '{self.queue}': "
                               f"alguma conexão aberta por consumir_em_paralelo() continua consumindo. Cancele os "
                               f"consumidores e feche as conexões antes de voltar.")
        expect(ready == 0,
               f"Ficaram {ready} de {self.count} mensagens prontas na fila '{self.queue}': elas não foram "
               f"consumidas, ou foram entregues e voltaram sem ack (ack esquecido, ou um canal fechado pelo broker "
               f"por um ack duplicado ou feito no canal errado — PRECONDITION_FAILED).")
        if ctx.namespace is not None:
            return  # in the kernel, run() saw connections, acks and threads exactly
        leaked = kit.connections_now(ctx) - self.before
        expect(not leaked, f"O broker ainda mostra {len(leaked)} conexão(ões) aberta(s) por consumir_em_paralelo(). "
                           f"Feche cada conexão antes de voltar (use `with`).")
        q = ctx.queue_when(self.queue, lambda q: kit.no_ack_deliveries(q)
                           or kit.stats(q).get("ack", 0) >= self.count)
        s, no_ack = kit.stats(q), kit.no_ack_deliveries(q)
        expect(no_ack == 0, f"{no_ack} mensagens foram entregues com auto_ack=True: o broker "
                            f"as apagou ao entregar, antes de qualquer processamento. {phrases.MANUAL_ACK} "
                            f"{phrases.STATS_MAY_LAG}")
        acks = s.get("ack", 0)
        expect(acks == self.count, f"O broker registrou {acks} acks na fila '{self.queue}'; "
                                   f"esperava {self.count}, um por mensagem. {phrases.STATS_MAY_LAG}")
        redelivered = s.get("redeliver", 0)
        expect(redelivered == 0,
               f"O broker reentregou {redelivered} mensagem(ns): algum canal fechou com "
               f"mensagens sem ack (um ack duplicado ou no canal errado fecha o canal com PRECONDITION_FAILED), e "
               f"elas foram entregues de novo — processadas duas vezes. Confirme cada mensagem uma vez, no canal "
               f"que a entregou. {phrases.STATS_MAY_LAG}")


# 5.3 ---------------------------------------------------------------------------------------------
class _Cobrador:
    """The `cobrar` the check hands to the learner: fails some payments always, some only on the
    first call. Each call is tied to the delivery in hand (the watch's latest delivery of that body),
    and the time each call returned is kept, so that the check can tell a delivery settled without
    a try, a delivery tried twice, and a settlement made before cobrar returned."""

    def __init__(self, always_fail: set[str], fail_once: set[str], watch: PikaWatch):
        self.always_fail, self.fail_once, self.watch = always_fail, fail_once, watch
        self.attempts: Counter = Counter()
        self.tries: Counter = Counter()      # calls per delivery (channel id, delivery tag)
        self.finished: list[float] = []      # time.monotonic() as each call returned
        self.not_text: list = []  # what cobrar got that was not a str
        self.lock = threading.Lock()

    def __call__(self, corpo) -> bool:
        if not isinstance(corpo, str):
            self.not_text.append(corpo)
        if isinstance(corpo, (bytes, bytearray)):
            corpo = corpo.decode()
        key = self.watch.latest.get(corpo.encode()) if isinstance(corpo, str) else None
        with self.lock:
            self.attempts[corpo] += 1
            attempt = self.attempts[corpo]
            if key is not None:
                self.tries[key] += 1
        try:
            if corpo in self.always_fail:
                return False
            if corpo in self.fail_once:
                return attempt > 1
            return True
        finally:
            with self.lock:
                self.finished.append(time.monotonic())


class SegundaChance(Exercise):
    id = "5.3"
    title = "processar_pagamentos() dá uma (e só uma) segunda chance a cada pagamento que falha."
    points = 3
    queue = "pagamentos"
    dead = "pagamentos_descartados"
    call_timeout = 4.0  # a right answer needs ~1.1 s
    bodies = [f"pagamento {i}" for i in range(1, 11)]
    # A consumer fell with these in hand before the learner's runs: they come back redelivered, and
    # that delivery was their first attempt.
    crashed = ["pagamento 1", "pagamento 2"]
    always_fail = {"pagamento 5", "pagamento 9"}
    fail_once = {"pagamento 1", "pagamento 4", "pagamento 7"}  # the first call of cobrar fails

    @property
    def discarded(self) -> list[str]:
        return [b for b in self.bodies if b in self.always_fail or (b in self.crashed and b in self.fail_once)]

    @property
    def paid(self) -> list[str]:
        return [b for b in self.bodies if b not in self.discarded]

    def tries(self, body: str) -> int:
        """How many times a right answer calls cobrar(body)."""
        if body in self.crashed:
            return 1
        return 2 if body in self.always_fail or body in self.fail_once else 1

    @property
    def redeliveries(self) -> int:
        return sum(self.tries(b) for b in self.bodies) - len(self.bodies) + len(self.crashed)

    def run(self, ctx: CheckContext) -> None:
        kit.fresh_queue(ctx, self.dead)
        watch = PikaWatch()
        cobrar = _Cobrador(self.always_fail, self.fail_once, watch)
        check = kit.CheckConnection(ctx)
        connection = check.connection
        watch.adopt(connection)
        try:
            channel = connection.channel()
            kit.fresh_queue(ctx, self.queue, self.crashed, arguments=kit.dead_letter_to(self.dead), channel=channel)
            self._crash_holding(connection)
            for body in self.bodies:
                if body not in self.crashed:
                    channel.basic_publish(exchange="", routing_key=self.queue, body=body, properties=kit.PERSISTENT)
            ctx.eventually(lambda: channel.queue_declare(queue=self.queue, passive=True).method.message_count,
                           lambda ready: ready >= len(self.bodies), timeout=2.0)
            closes = kit.record_calls(channel, "close")
            result = call_watched(ctx, watch, "processar_pagamentos", channel, self.queue, cobrar,
                                   advice=_amqp_advice, on_timeout=lambda: self._on_timeout(ctx, cobrar),
                                   timeout=self.call_timeout)
            channel_hint = kit.handed_channel_hint("processar_pagamentos", channel, closes, CHANNEL_WAS_CLOSED)
            # Still open: a consumer left registered shows in a passive declare, exactly.
            counts = kit.exact_counts(ctx, self.queue)
        finally:
            check.close()

        hint = watch.thread_hint("processar_pagamentos")
        expect(hint is None, hint)
        expect(channel_hint is None, channel_hint)
        expect(not watch.auto_ack(),
               f"processar_pagamentos() consumiu com auto_ack=True: o broker apaga cada mensagem ao entregá-la, e "
               f"um pagamento que falhou não pode mais voltar para a fila. {phrases.MANUAL_ACK}")
        attempts = dict(cobrar.attempts)
        expect(attempts, "cobrar nunca foi chamada: consuma as mensagens da fila e chame cobrar(corpo) para cada uma.")
        expect(not cobrar.not_text, f"cobrar recebeu {type(cobrar.not_text[0]).__name__ if cobrar.not_text else ''}; "
                                    f"ela recebe o corpo como texto (str): use body.decode().")
        payments = {b.encode() for b in self.bodies}
        copies = [b for b in watch.publishes if b in payments]
        expect(not copies,
               f"processar_pagamentos() publicou {len(copies)} cópia(s) de pagamentos na fila (basic_publish, por "
               f"exemplo {kit.shown(copies[:1])}) em vez de devolver a própria mensagem: a cópia é uma mensagem nova "
               f"(o broker a entrega com redelivered=False), e a original sai da fila com o basic_ack como se "
               f"tivesse sido cobrada. Dê a segunda chance devolvendo a entrega à fila: "
               f"basic_nack(delivery_tag=method.delivery_tag, requeue=True) (ou basic_reject com requeue=True); "
               f"ela volta marcada com method.redelivered=True.")
        with cobrar.lock:
            tries, finished = Counter(cobrar.tries), list(cobrar.finished)
        retried = sorted({watch.deliveries[k].decode("utf-8", "replace") for k, n in tries.items() if n > 1})
        expect(not retried,
               f"cobrar foi chamada mais de uma vez para a mesma entrega ({retried}): uma nova tentativa dentro do "
               f"mesmo callback (como cobrar(corpo) or cobrar(corpo)) não é a segunda chance da regra. Chame "
               f"cobrar uma vez por entrega; se falhar na primeira, devolva a mensagem à fila (basic_nack com "
               f"requeue=True) — a segunda tentativa é a reentrega, marcada com method.redelivered=True.")
        untried = [k for k in watch.deliveries if k in watch.settled and tries[k] == 0]
        untried_bodies = sorted({watch.deliveries[k].decode("utf-8", "replace") for k in untried})
        if any(k in watch.redelivered for k in untried):
            expect(False,
                   f"{untried_bodies} chegaram reentregues (method.redelivered=True) e foram descartados sem "
                   f"chamar cobrar: a reentrega é a segunda tentativa, não um descarte automático. Toda entrega, "
                   f"reentregue ou não, deve ser tentada com cobrar(corpo); só se a tentativa de uma entrega "
                   f"reentregue falhar, descarte-a com requeue=False.")
        expect(not untried,
               f"{untried_bodies} foram confirmados ou recusados sem chamar cobrar: toda entrega deve ser tentada "
               f"com cobrar(corpo), e o resultado decide (basic_ack se cobrou; se falhou, de volta à fila ou "
               f"descartada).")
        ahead = kit.settled_early(watch.settles, finished)
        expect(not ahead,
               f"processar_pagamentos() confirmou ou recusou entregas (basic_ack/basic_reject) antes de cobrar "
               f"voltar (em algum momento, {ahead} à frente das chamadas de cobrar já terminadas). Confirmar antes "
               f"do trabalho tira a mensagem da fila antes de saber se a cobrança deu certo: um pagamento que "
               f"falha já não pode voltar, e um consumidor que cai no meio o perde. Chame cobrar(corpo) primeiro e "
               f"decida pelo resultado: basic_ack se cobrou, basic_nack/basic_reject se falhou.")
        many = sorted(b for b, n in attempts.items() if n > 2)
        most = max((attempts[b] for b in many), default=0)
        expect(not many, f"{many} foram tentados até {most} vezes; o máximo é 2: depois de uma falha na segunda "
                         f"tentativa, a mensagem voltou para a fila de novo (requeue=True) em vez de ser "
                         f"descartada. Como saber se uma entrega já é a segunda? O broker marca as reentregas (method.redelivered); "
                         f"a falha de uma entrega com redelivered=True é a segunda e deve ser descartada com "
                         f"requeue=False.")
        again = sorted(b for b in self.crashed if attempts.get(b, 0) > 1)
        expect(not again,
               f"{again} já chegaram reentregues (method.redelivered=True: um consumidor anterior caiu com eles na "
               f"mão, e essa foi a primeira tentativa); falharam de novo aqui e você os tentou mais uma vez. A "
               f"contagem de tentativas não pode ficar na memória — um consumidor que reinicia a perde —: quem "
               f"diz "
               f"se esta entrega é a segunda é o broker, em method.redelivered. Se ela falhar com "
               f"redelivered=True, descarte com requeue=False.")
        once = sorted(b for b in self.fail_once if b not in self.crashed and attempts.get(b, 0) < 2)
        expect(not once, f"{once} falharam na primeira tentativa e não foram tentados de novo: um pagamento que "
                         f"falha pela primeira vez deve voltar para a fila (basic_nack com requeue=True) para uma "
                         f"segunda tentativa.")
        skipped = sorted(b for b in self.bodies if attempts.get(b, 0) == 0)
        expect(not skipped, f"{skipped} nunca foram cobrados: consuma até a fila esvaziar (pare depois de ~1 s sem "
                            f"mensagens novas).")
        outcomes = watch.outcomes()
        acked_failure = sorted(b for b in self.discarded if "ack" in outcomes.get(b.encode(), []))
        expect(not acked_failure,
               f"{acked_failure} falharam duas vezes e foram confirmados com basic_ack: assim o pagamento some sem "
               f"deixar rastro. Na segunda falha, descarte com basic_reject(delivery_tag=..., requeue=False): a "
               f"dead-letter exchange da fila o guarda em '{self.dead}'.")
        expect(counts is None or counts[1] == 0,
               "Depois que processar_pagamentos() voltou, o consumidor continuava registrado na fila "
               f"'{self.queue}' (o broker ainda mostrava {counts and counts[1]} consumidor): o broker continua "
               f"entregando mensagens a ele, que ficam presas sem ack até o canal fechar. {phrases.CANCEL_CONSUMER}")
        expect(isinstance(result, list) and sorted(map(str, result)) == sorted(self.paid),
               f"processar_pagamentos() devolveu {result!r}; esperava a lista dos pagamentos cobrados com sucesso "
               f"(em qualquer ordem): {self.paid!r}.")

    def _crash_holding(self, connection) -> None:
        """A consumer that falls with the `crashed` messages in hand: it takes them without ack, and
        its channel closes; the broker puts them back, marked redelivered."""
        crash = connection.channel()
        for _ in self.crashed:
            crash.basic_get(queue=self.queue, auto_ack=False)
        crash.close()

    def _on_timeout(self, ctx: CheckContext, cobrar: _Cobrador) -> str:
        attempts = dict(cobrar.attempts)
        # an endless loop: a payment tried again and again (a retry that stops at 3 or 4 is not one)
        looping = sorted((b for b, n in attempts.items() if n > 4), key=lambda b: -attempts[b])
        if looping:
            redelivered = kit.stats(ctx.queue(self.queue)).get("redeliver", 0)
            return (f"`processar_pagamentos` não terminou em {self.call_timeout:.0f} s: {looping} foram tentados "
                    f"{attempts[looping[0]]} vezes, porque cada falha volta para a fila com requeue=True. É um "
                    f"laço sem fim: um pagamento que sempre falha volta, falha, volta... e a fila nunca fica 1 s "
                    f"quieta. O broker registrou {redelivered} reentregas. "
                    f"{phrases.STATS_MAY_LAG} Na segunda falha "
                    f"(method.redelivered=True), descarte com requeue=False.")
        return (f"`processar_pagamentos` não terminou em {self.call_timeout:.0f} s. Consuma com "
                f"channel.consume(fila, inactivity_timeout=1) e pare no primeiro (None, None, None): 1 s sem "
                f"mensagens novas.")

    def verify(self, ctx: CheckContext) -> None:
        n = len(self.bodies)
        ready, consumers = kit.counts_of(ctx, self.queue)
        expect(consumers == 0, f"Ainda há {consumers} consumidor(es) registrado(s) na fila '{self.queue}'. "
                               f"{phrases.CANCEL_CONSUMER}")
        if ready:
            s = kit.stats(ctx.queue(self.queue))  # one look, no wait: only to word the hint
            if s.get("redeliver", 0) > 2 * n:
                why = (f"o broker registrou {s['redeliver']} reentregas: as falhas voltaram "
                       f"para a fila a cada falha, sem limite de tentativas (requeue=True em toda falha). Na segunda "
                       f"falha, descarte com requeue=False. {phrases.STATS_MAY_LAG}")
            else:
                why = ("foram entregues e não confirmadas nem recusadas (voltaram quando a conexão fechou), ou nem "
                       "chegaram a ser consumidas. Cada entrega termina em basic_ack, ou em basic_nack/basic_reject.")
            expect(False, f"Ficaram {ready} de {n} mensagens na fila '{self.queue}': {why}")
        discarded = _dead_lettered(ctx, self.dead, self.queue, len(self.discarded))
        expect(discarded is not None, phrases.queue_missing(self.dead))
        expect(sorted(discarded) == sorted(self.discarded),
               f"A fila '{self.dead}' (para onde o broker manda o que você descarta com requeue=False) tem "
               f"{sorted(discarded)!r}; esperava {sorted(self.discarded)!r}: os que falharam na segunda tentativa. "
               f"Quem falha pela primeira vez merece uma segunda chance (requeue=True); quem chega reentregue "
               f"(method.redelivered) e falha, já está na segunda.")
        if ctx.namespace is not None:
            return  # in the kernel, run() saw every attempt exactly; the counters are the grader's evidence
        # Counters only grow: too many acks or redeliveries is a final verdict as soon as it shows.
        q = ctx.queue_when(self.queue, lambda q: kit.no_ack_deliveries(q)
                           or kit.stats(q).get("ack", 0) > len(self.paid)
                           or kit.stats(q).get("redeliver", 0) > self.redeliveries
                           or (kit.stats(q).get("ack", 0) >= len(self.paid)
                               and kit.stats(q).get("redeliver", 0) >= self.redeliveries))
        s, no_ack = kit.stats(q), kit.no_ack_deliveries(q)
        expect(no_ack == 0, f"{no_ack} mensagens foram entregues com auto_ack=True: o broker "
                            f"as apagou ao entregar. {phrases.MANUAL_ACK} {phrases.STATS_MAY_LAG}")
        acks = s.get("ack", 0)
        expect(acks == len(self.paid),
               f"O broker registrou {acks} acks; esperava {len(self.paid)}, um por pagamento "
               f"cobrado com sucesso. {phrases.STATS_MAY_LAG}")
        redelivered = s.get("redeliver", 0)
        expect(redelivered == self.redeliveries,
               f"O broker registrou {redelivered} reentregas; esperava {self.redeliveries}: "
               f"uma por pagamento que falhou na primeira tentativa, mais as {len(self.crashed)} mensagens que já "
               f"chegaram reentregues. Dê a segunda chance devolvendo a mensagem à fila (basic_nack ou "
               f"basic_reject com requeue=True), não publicando uma cópia, e só uma vez. {phrases.STATS_MAY_LAG}")
