"""Checks for chapter 5 (Consumidores). Statements: solutions/05_consumidores.ipynb.

5.1 and 5.3 declare their queue with a dead-letter exchange (the default exchange, routing to a
second queue): the learner rejects with requeue=False, and the broker itself keeps a copy of exactly
which messages were rejected. That is how `verify` tells "rejected" from "acked" or "lost" using
only the broker.
"""
from __future__ import annotations

import gc
import threading
import time
from collections import Counter

import pika
import pika.exceptions

from .checks import CheckContext, Exercise, close_quietly, expect

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
MANUAL_ACK = ("Use auto_ack=False (o padrão) e confirme cada mensagem depois de processá-la com "
              "ch.basic_ack(delivery_tag=method.delivery_tag).")


def _stats(q: dict | None) -> dict:
    return (q or {}).get("message_stats") or {}


def _no_ack(q: dict | None) -> int:
    stats = _stats(q)
    return stats.get("deliver_no_ack", 0) + stats.get("get_no_ack", 0)


def _open_connections() -> set[int]:
    """ids of the BlockingConnections open in this process (kernel side only)."""
    return {id(o) for o in gc.get_objects() if isinstance(o, pika.BlockingConnection) and o.is_open}




def _amqp_hint(name: str, exc: Exception) -> str:
    """A pt-BR hint for an AMQP error raised out of the learner's function."""
    text = (f"{exc.reply_code} {exc.reply_text}" if isinstance(exc, pika.exceptions.ChannelClosedByBroker)
            else str(exc))
    if "inequivalent arg" in text:
        return (f"{name}() fez o broker fechar o canal: {text}. Não declare a fila de novo com outros "
                f"argumentos — a verificação já a criou (com uma dead-letter exchange). Se quiser "
                f"conferir que ela existe, use queue_declare(queue=..., passive=True).")
    if "unknown delivery tag" in text:
        return (f"{name}() fez o broker fechar o canal: {text}. Cada entrega só pode ser confirmada ou "
                f"recusada uma vez, e pelo mesmo canal que a entregou (a delivery tag só existe nele).")
    if isinstance(exc, pika.exceptions.ChannelWrongStateError):
        return (f"{name}() usou um canal que já estava fechado ({type(exc).__name__}). O broker fecha o "
                f"canal (406 PRECONDITION_FAILED - unknown delivery tag) quando uma entrega é confirmada "
                f"duas vezes, ou por um canal que não foi o que a entregou: confirme cada mensagem uma só "
                f"vez, no canal que a entregou.")
    return (f"{name}() levantou {type(exc).__name__}: {text.rstrip('.') or '(sem mensagem)'}. Confira se "
            f"cada mensagem é confirmada (ou recusada) uma só vez, pelo canal que a entregou.")


def _call(ctx: CheckContext, name: str, *args):
    """ctx.call, with AMQP errors from the learner's code turned into chapter-specific hints."""
    try:
        return ctx.call(name, *args)
    except pika.exceptions.AMQPError as exc:
        raise AssertionError(_amqp_hint(name, exc)) from None
    except AssertionError as exc:
        # ctx.call already turns AMQP errors into a generic hint; the original is its context.
        if isinstance(exc.__context__, pika.exceptions.AMQPError):
            raise AssertionError(_amqp_hint(name, exc.__context__)) from None
        raise


def _declare_with_dead_letter(channel, queue: str, dead: str) -> None:
    channel.queue_declare(queue=dead, durable=True)
    channel.queue_declare(queue=queue, durable=True,
                          arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})


# 5.1 ---------------------------------------------------------------------------------------------
class PedidosValidos(Exercise):
    id = "5.1"
    title = "processar_pedidos() confirma os pedidos válidos e rejeita os inválidos sem devolvê-los à fila."
    points = 2
    queue = "pedidos"
    dead = "pedidos_invalidos"
    messages = [
        '{"pedido": 101, "quantidade": 2}',
        '{"pedido": 102, "quantidade": 1}',
        "isto não é JSON",
        '{"pedido": 103, "quantidade": 0}',
        '{"pedido": 104, "quantidade": 5}',
        '{"pedido": 105}',
        '{"pedido": 106, "quantidade": 3}',
    ]
    valid = [101, 102, 104, 106]
    invalid = ["isto não é JSON", '{"pedido": 103, "quantidade": 0}', '{"pedido": 105}']

    def run(self, ctx: CheckContext) -> None:
        for name in (self.queue, self.dead):  # start clean, whatever an earlier try left
            ctx.management.delete_queue(name)
        connection = ctx.curso.connect()
        try:
            channel = connection.channel()
            _declare_with_dead_letter(channel, self.queue, self.dead)
            for body in self.messages:
                channel.basic_publish(exchange="", routing_key=self.queue, body=body, properties=PERSISTENT)
            result = _call(ctx, "processar_pedidos", channel, self.queue)
        finally:
            # Closing returns whatever was delivered and not settled: only then does the queue show
            # what processar_pedidos() really did.
            close_quietly(connection)
        expect(isinstance(result, list),
               f"processar_pedidos() deveria devolver uma lista, devolveu {type(result).__name__}.")
        expect(result == self.valid,
               f"processar_pedidos() devolveu {result!r}; esperava {self.valid!r}: os números (campo "
               f"'pedido') dos pedidos válidos, na ordem em que chegaram. Válido = JSON com 'quantidade' "
               f"inteira maior que zero.")

    def verify(self, ctx: CheckContext) -> None:
        n = len(self.messages)
        q = ctx.queue_when(self.queue, lambda q: q.get("messages", 0) == 0
                           and _stats(q).get("ack", 0) >= len(self.valid))
        expect(q is not None, f"A fila '{self.queue}' não existe: a verificação a cria e publica nela; "
                              f"rode a célula de verificação de novo.")
        stats = _stats(q)
        expect(_no_ack(q) == 0,
               f"{_no_ack(q)} mensagens foram entregues com auto_ack=True: o broker as apagou ao "
               f"entregar, e as inválidas não puderam ser recusadas. {MANUAL_ACK}")
        ready, unacked = q.get("messages_ready", 0), q.get("messages_unacknowledged", 0)
        delivered = stats.get("deliver_get", 0)
        if ready or unacked:
            if stats.get("redeliver", 0) > 0:
                why = (f"o broker registrou {stats['redeliver']} reentregas: você devolveu mensagens à "
                       f"fila (requeue=True, o padrão do basic_nack). Uma mensagem inválida nunca vai "
                       f"ficar válida: recuse-a com ch.basic_reject(delivery_tag=..., requeue=False).")
            elif delivered:
                why = ("elas foram entregues e não foram confirmadas nem recusadas; voltaram para a fila "
                       "quando a conexão fechou. Toda entrega precisa de um basic_ack (válidas) ou de um "
                       "basic_reject(..., requeue=False) (inválidas).")
            else:
                why = ("ninguém as consumiu. Registre o consumidor com channel.basic_consume(...) e rode o "
                       "laço com channel.connection.process_data_events(time_limit=...) até a fila esvaziar.")
            expect(False, f"Ficaram {ready + unacked} de {n} mensagens na fila '{self.queue}': {why}")
        acks = stats.get("ack", 0)
        expect(acks == len(self.valid),
               f"O broker registrou {acks} ack(s) na fila '{self.queue}'; esperava {len(self.valid)}, um "
               f"por pedido válido. As inválidas devem ser recusadas (requeue=False), não confirmadas.")
        dead = ctx.queue_when(self.dead, lambda d: d.get("messages", 0) >= len(self.invalid))
        rejected = sorted(ctx.bodies(self.dead, n + 1)) if dead and dead.get("messages", 0) else []
        expect(rejected == sorted(self.invalid),
               f"A fila '{self.dead}' (para onde o broker manda o que você recusa com requeue=False) tem "
               f"{rejected!r}; esperava exatamente as {len(self.invalid)} mensagens inválidas "
               f"{sorted(self.invalid)!r}.")


# 5.2 ---------------------------------------------------------------------------------------------
class _Recorder:
    """The `processar` the check hands to the learner: records who processed what, and overlaps."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.calls: list[tuple[object, int]] = []
        self.active = 0
        self.peak = 0

    def __call__(self, corpo) -> None:
        with self.lock:
            self.calls.append((corpo, threading.get_ident()))
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.seconds)
        finally:
            with self.lock:
                self.active -= 1


class EmParalelo(Exercise):
    id = "5.2"
    title = "consumir_em_paralelo() processa tudo uma vez, em várias threads, com ack no canal certo."
    points = 3
    queue = "trabalhos"
    count = 24
    k = 4
    work_seconds = 0.1
    call_timeout = 20.0

    @property
    def bodies(self) -> list[str]:
        return [f"trabalho {i:02d}" for i in range(1, self.count + 1)]

    def snapshot(self, ctx: CheckContext) -> None:
        self.before = {c["name"] for c in ctx.management.connections()}

    def run(self, ctx: CheckContext) -> None:
        ctx.management.delete_queue(self.queue)
        connection = ctx.curso.connect()
        try:
            channel = connection.channel()
            channel.queue_declare(queue=self.queue, durable=True)
            for body in self.bodies:
                channel.basic_publish(exchange="", routing_key=self.queue, body=body, properties=PERSISTENT)
        finally:
            close_quietly(connection)
        recorder = _Recorder(self.work_seconds)
        threads_before = set(threading.enumerate())
        connections_before = _open_connections()
        _call(ctx, "consumir_em_paralelo", self.queue, self.k, recorder)

        deadline = time.monotonic() + 1.0  # a thread that was joined may take a moment to vanish
        left = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [t for t in left if t.is_alive()]
        names = ", ".join(t.name for t in left[:4])
        if left:  # let stray threads finish (bounded) so they do not meddle with what comes next
            for t in left:
                t.join(timeout=max(0.0, deadline + self.call_timeout - time.monotonic()))
        expect(not left, f"consumir_em_paralelo() voltou deixando {len(left)} thread(s) rodando "
                         f"({names}). Espere cada uma terminar (thread.join(), "
                         f"ou pool.shutdown(wait=True)) antes de voltar.")
        with recorder.lock:
            calls = list(recorder.calls)
            peak = recorder.peak
        expect(calls, "processar nunca foi chamada. Para cada mensagem consumida, chame processar(corpo) "
                      "numa thread trabalhadora e só depois confirme a mensagem. (Lembre: basic_consume só "
                      "registra o consumidor; alguém precisa rodar o laço que entrega as mensagens.)")
        expect(all(isinstance(c, str) for c, _ in calls),
               "processar deve receber o corpo como texto (str): use body.decode().")
        seen = Counter(c for c, _ in calls)
        twice = sorted(c for c, n in seen.items() if n > 1)
        expect(not twice, f"{len(twice)} mensagem(ns) foram processadas mais de uma vez ({twice[:3]}...). "
                          f"Isso acontece quando o ack se perde (canal fechado por um ack duplicado ou feito "
                          f"no canal errado) e o broker reentrega a mensagem.")
        missing = [b for b in self.bodies if b not in seen]
        expect(not missing, f"{len(missing)} de {self.count} mensagens nunca foram processadas "
                            f"({missing[:3]}...). Consuma até a fila esvaziar (pare depois de ~1 s sem "
                            f"mensagens novas) e confirme cada uma no canal que a entregou: um consumidor "
                            f"cujos acks não chegam (esquecidos, ou feitos por outro canal, que o broker "
                            f"fecha com 'unknown delivery tag') recebe até o limite do prefetch e para.")
        threads = {t for _, t in calls}
        expect(len(threads) > 1 and peak > 1,
               f"Só {len(threads)} thread processou mensagens e nunca duas ao mesmo tempo: o trabalho não foi "
               f"feito em paralelo. Use {self.k} threads (uma conexão por thread, criada nela, com "
               f"basic_qos(prefetch_count=1); ou um pool de threads trabalhadoras que confirma com "
               f"connection.add_callback_threadsafe(...)).")
        leaked = _open_connections() - connections_before
        expect(not leaked, f"consumir_em_paralelo() deixou {len(leaked)} conexão(ões) aberta(s). Feche "
                           f"cada conexão que abrir (use `with pika.BlockingConnection(curso.params()) as "
                           f"connection:` dentro de cada thread).")

    def verify(self, ctx: CheckContext) -> None:
        q = ctx.queue_when(self.queue, lambda q: q.get("messages", 0) == 0
                           and _stats(q).get("ack", 0) >= self.count)
        expect(q is not None, f"A fila '{self.queue}' não existe: a verificação a cria e publica nela; "
                              f"rode a célula de verificação de novo.")
        stats = _stats(q)
        expect(_no_ack(q) == 0,
               f"{_no_ack(q)} mensagens foram entregues com auto_ack=True: o broker as apagou ao entregar, "
               f"antes de qualquer processamento. {MANUAL_ACK}")
        unacked = q.get("messages_unacknowledged", 0)
        expect(unacked == 0,
               f"{unacked} mensagens estão entregues e sem ack: alguma conexão aberta por "
               f"consumir_em_paralelo() ainda as segura. Confirme cada mensagem e feche as conexões antes "
               f"de voltar.")
        ready = q.get("messages_ready", 0)
        expect(ready == 0,
               f"Ficaram {ready} de {self.count} mensagens prontas na fila '{self.queue}': elas não foram "
               f"consumidas, ou foram entregues e voltaram sem ack (ack esquecido, ou um canal fechado "
               f"pelo broker por um ack duplicado ou feito no canal errado — PRECONDITION_FAILED).")
        acks = stats.get("ack", 0)
        expect(acks == self.count,
               f"O broker registrou {acks} acks na fila '{self.queue}'; esperava {self.count}, um por mensagem.")
        redelivered = stats.get("redeliver", 0)
        expect(redelivered == 0,
               f"O broker reentregou {redelivered} mensagem(ns): algum canal fechou com mensagens sem ack "
               f"(um ack duplicado ou no canal errado fecha o canal com PRECONDITION_FAILED), e elas "
               f"foram entregues de novo — processadas duas vezes. Confirme cada mensagem uma vez, no "
               f"canal que a entregou.")
        leaked = ctx.eventually(lambda: {c["name"] for c in ctx.management.connections()} - self.before,
                                lambda new: bool(new))
        expect(not leaked, f"O broker ainda mostra {len(leaked)} conexão(ões) aberta(s) por "
                           f"consumir_em_paralelo(). Feche cada conexão antes de voltar (use `with`).")


# 5.3 ---------------------------------------------------------------------------------------------
class _Cobrador:
    """The `cobrar` the check hands to the learner: fails some payments, some only the first time."""

    def __init__(self, always_fail: set[str], fail_once: set[str]):
        self.always_fail, self.fail_once = always_fail, fail_once
        self.attempts: Counter = Counter()
        self.lock = threading.Lock()

    def __call__(self, corpo) -> bool:
        if isinstance(corpo, (bytes, bytearray)):
            corpo = corpo.decode()
        with self.lock:
            self.attempts[corpo] += 1
            attempt = self.attempts[corpo]
        if corpo in self.always_fail:
            return False
        if corpo in self.fail_once:
            return attempt > 1
        return True


class SegundaChance(Exercise):
    id = "5.3"
    title = "processar_pagamentos() dá uma (e só uma) segunda chance a cada pagamento que falha."
    points = 3
    queue = "pagamentos"
    dead = "pagamentos_descartados"
    bodies = [f"pagamento {i}" for i in range(1, 9)]
    always_fail = {"pagamento 3", "pagamento 7"}
    fail_once = {"pagamento 2", "pagamento 6"}

    @property
    def paid(self) -> list[str]:
        return [b for b in self.bodies if b not in self.always_fail]

    def run(self, ctx: CheckContext) -> None:
        for name in (self.queue, self.dead):
            ctx.management.delete_queue(name)
        cobrar = _Cobrador(self.always_fail, self.fail_once)
        connection = ctx.curso.connect()
        try:
            channel = connection.channel()
            _declare_with_dead_letter(channel, self.queue, self.dead)
            for body in self.bodies:
                channel.basic_publish(exchange="", routing_key=self.queue, body=body, properties=PERSISTENT)
            result = _call(ctx, "processar_pagamentos", channel, self.queue, cobrar)
        finally:
            close_quietly(connection)
        attempts = dict(cobrar.attempts)
        expect(attempts, "cobrar nunca foi chamada: consuma as mensagens da fila e chame cobrar(corpo) "
                         "para cada uma.")
        once = sorted(b for b in self.fail_once if attempts.get(b, 0) < 2)
        expect(not once, f"{once} falharam na primeira tentativa e não foram tentados de novo: um pagamento "
                         f"que falha pela primeira vez deve voltar para a fila (requeue=True) para uma "
                         f"segunda tentativa.")
        many = sorted(b for b, n in attempts.items() if n > 2)
        most = max((attempts[b] for b in many), default=0)
        expect(not many, f"{many} foram tentados até {most} vezes; o máximo é 2. Como "
                         f"saber se uma entrega já é a segunda? O broker marca as reentregas "
                         f"(method.redelivered); a segunda falha deve ser descartada com requeue=False.")
        skipped = sorted(b for b in self.bodies if attempts.get(b, 0) == 0)
        expect(not skipped, f"{skipped} nunca foram cobrados: consuma até a fila esvaziar (pare depois de "
                            f"~1 s sem mensagens novas).")
        expect(isinstance(result, list) and sorted(map(str, result)) == sorted(self.paid),
               f"processar_pagamentos() devolveu {result!r}; esperava a lista dos pagamentos cobrados com "
               f"sucesso (em qualquer ordem): {self.paid!r}.")

    def verify(self, ctx: CheckContext) -> None:
        n = len(self.bodies)
        q = ctx.queue_when(self.queue, lambda q: q.get("messages", 0) == 0
                           and _stats(q).get("ack", 0) >= len(self.paid))
        expect(q is not None, f"A fila '{self.queue}' não existe: a verificação a cria e publica nela; "
                              f"rode a célula de verificação de novo.")
        stats = _stats(q)
        expect(_no_ack(q) == 0,
               f"{_no_ack(q)} mensagens foram entregues com auto_ack=True: o broker as apagou ao entregar, "
               f"e um pagamento que falhou não pode mais voltar para a fila. {MANUAL_ACK}")
        ready, unacked = q.get("messages_ready", 0), q.get("messages_unacknowledged", 0)
        if ready or unacked:
            if stats.get("redeliver", 0) > 2 * n:
                why = (f"o broker registrou {stats['redeliver']} reentregas: as falhas voltaram para a "
                       f"fila vezes sem fim (requeue=True em toda falha). Na segunda falha, descarte com "
                       f"requeue=False.")
            elif stats.get("deliver_get", 0):
                why = ("elas foram entregues e não foram confirmadas nem recusadas; voltaram quando a "
                       "conexão fechou. Cada entrega termina em basic_ack, ou em basic_nack/basic_reject.")
            else:
                why = "ninguém as consumiu."
            expect(False, f"Ficaram {ready + unacked} mensagens na fila '{self.queue}': {why}")
        acks = stats.get("ack", 0)
        expect(acks == len(self.paid),
               f"O broker registrou {acks} acks; esperava {len(self.paid)}, um por pagamento cobrado com "
               f"sucesso. Um pagamento que falhou não é confirmado: volta para a fila (1ª falha) ou é "
               f"descartado com requeue=False (2ª falha).")
        dead = ctx.queue_when(self.dead, lambda d: d.get("messages", 0) >= len(self.always_fail))
        discarded = sorted(ctx.bodies(self.dead, n + 1)) if dead and dead.get("messages", 0) else []
        expect(discarded == sorted(self.always_fail),
               f"A fila '{self.dead}' (para onde o broker manda o que você descarta com requeue=False) "
               f"tem {discarded!r}; esperava {sorted(self.always_fail)!r}, os que falharam duas vezes. "
               f"Quem falha pela primeira vez merece uma segunda chance (requeue=True).")
        redelivered = stats.get("redeliver", 0)
        expect(redelivered == len(self.always_fail) + len(self.fail_once),
               f"O broker registrou {redelivered} reentregas; esperava "
               f"{len(self.always_fail) + len(self.fail_once)} (uma por pagamento que falhou na primeira "
               f"tentativa). Dê a segunda chance devolvendo a mensagem à fila (basic_nack ou basic_reject "
               f"com requeue=True), não publicando uma cópia.")
