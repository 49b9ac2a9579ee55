"""Checks for chapter 6 (Padrões de mensageria). Statements: solutions/06_padroes_de_mensageria.ipynb.

6.1 runs the learner's `worker` in two background threads (`course_utils.background`) under a
`PikaWatch`, sends a long task followed by short ones and reads who did what and when: fair dispatch
(prefetch 1) is the only way the short tasks all finish before the long one. The broker side checks
that nothing is left ready or unacked (a passive declare after the workers' connections are closed)
and, on the grader's side, the ack counters.

6.2 calls the learner's `assinar` for three subscribers (one late) and `receber` for each; the queues
are read from the management API while the subscribers' connections are open (exclusive queues die
with them). Only the exchange outlives the check, so the grader's side can only judge the exchange.

6.3 is a topology exercise: `verify` probes the learner's bus itself (publishes its own events and
reads where they landed), so both sides judge the routing; `run` also checks that re-subscribing a
service replaces its bindings.

6.4 runs a real RPC server (a background thread with its own connection) that answers each request
twice (first a decoy with another correlation_id), and a dead one (a queue nobody consumes, whose
expired messages are dead-lettered): the broker keeps exact evidence of every request the server saw
(a record queue) and of the request that expired while the server was down.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pika
import pika.exceptions

from ...background import Background
from ...errors import StrictModeError
from .. import kit, phrases
from ..checks import CheckContext, Exercise, expect
from ..pikawatch import PikaWatch


def _thread_failure(name: str, exc: BaseException) -> str:
    """The hint for an exception that ended the learner's function in a worker thread (where
    kit.call cannot run: its time limit needs the main thread)."""
    if isinstance(exc, NotImplementedError):
        return phrases.not_implemented(name)
    if isinstance(exc, StrictModeError):
        return phrases.strict_refused(name, exc)
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return phrases.channel_closed(name, exc.reply_code, exc.reply_text)
    if isinstance(exc, pika.exceptions.AMQPError):
        return phrases.connection_failed(name, exc)
    text = phrases.raised(name, exc)
    body = kit.message_in_traceback(exc)
    if body is not None:
        shown = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
        text += f" Aconteceu ao tratar a mensagem {shown[:120]!r}."
    return text


# 6.1 ---------------------------------------------------------------------------------------------
class _Tarefas:
    """The `processar` handed to the learner's workers: a long task takes `long_s`, a short one
    `short_s`; records who did what, when each call started and ended."""

    def __init__(self, long_s: float, short_s: float):
        self.long_s, self.short_s = long_s, short_s
        self.lock = threading.Lock()
        self.calls: list[dict] = []
        self.not_text: list = []

    def __call__(self, corpo) -> None:
        if not isinstance(corpo, str):
            self.not_text.append(corpo)
            corpo = corpo.decode("utf-8", "replace") if isinstance(corpo, (bytes, bytearray)) else str(corpo)
        start = time.monotonic()
        time.sleep(self.long_s if corpo.startswith("longa") else self.short_s)
        with self.lock:
            self.calls.append({"corpo": corpo, "thread": threading.current_thread().name,
                               "inicio": start, "fim": time.monotonic()})

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.calls)


class _QosLog:
    """Records basic_qos(prefetch_count=...) per channel for the duration of a `with` block
    (BlockingChannel.basic_qos patched on the class, calls passed through unchanged)."""

    def __init__(self) -> None:
        self.prefetch: dict[int, int] = {}

    def __enter__(self) -> "_QosLog":
        from pika.adapters.blocking_connection import BlockingChannel

        self._cls, self._original = BlockingChannel, BlockingChannel.__dict__["basic_qos"]
        log, original = self, self._original

        def basic_qos(channel, prefetch_size=0, prefetch_count=0, global_qos=False):
            log.prefetch[id(channel)] = prefetch_count
            return original(channel, prefetch_size=prefetch_size, prefetch_count=prefetch_count,
                            global_qos=global_qos)

        BlockingChannel.basic_qos = basic_qos
        return self

    def __exit__(self, *exc) -> None:
        self._cls.basic_qos = self._original


class PoolJusto(Exercise):
    id = "6.1"
    title = "worker() divide as tarefas de forma justa, confirma cada uma e para quando pedem."
    points = 3
    queue = "tarefas_justas"
    long_s = 0.6
    short_s = 0.02
    workers = 2
    stop_s = 1.0  # how long the workers get, together, to return after parar.set()

    @property
    def bodies(self) -> list[str]:
        return ["longa 1"] + [f"curta {i}" for i in range(2, 8)]

    def snapshot(self, ctx: CheckContext) -> None:
        self.before = kit.connection_names(ctx)

    def run(self, ctx: CheckContext) -> None:
        worker = ctx.learner("worker")
        expect(callable(worker), phrases.not_callable("worker", type(worker).__name__))
        shared = kit.open_in(ctx.namespace, kit.globals_used(worker))
        if shared:  # not run: the tasks wait in the queue, which the broker shows exactly
            kit.fresh_queue(ctx, self.queue, self.bodies)
        expect(not shared,
               f"worker() usa a conexão {kit.names_list(shared)}, aberta fora dela: as duas threads da verificação "
               f"usariam a mesma conexão. {phrases.THREADS_CONSUME} Aqui: "
               f"`with pika.BlockingConnection(curso.params()) as connection:` dentro de worker().")
        kit.fresh_queue(ctx, self.queue)
        tarefas = _Tarefas(self.long_s, self.short_s)
        parar = threading.Event()
        watch = PikaWatch()
        qos = _QosLog()
        bg = Background(ctx.curso)
        connections_before = kit.open_connections()
        stuck: list[str] = []
        returned_early: list[str] = []
        alive_at_start = True
        for shared in kit.open_in(ctx.namespace):  # a connection of the answer cell, shared by the workers?
            value = ctx.namespace[shared]
            watch.adopt(getattr(value, "connection", value) if not isinstance(value, pika.BlockingConnection) else value)
        probe = kit.CheckConnection(ctx)
        try:
            channel = probe.connection.channel()

            def consumers() -> int:
                return channel.queue_declare(queue=self.queue, passive=True).method.consumer_count

            with watch, qos:
                pool = [bg.thread(f"worker-{i}", worker, self.queue, tarefas, parar)
                        for i in range(1, self.workers + 1)]
                registered = ctx.eventually(consumers, lambda n: n >= self.workers or not all(w.alive for w in pool),
                                            timeout=5)
                alive_at_start = all(w.alive for w in pool)
                # Published even when the workers are not there: the broker then shows them waiting, exactly.
                for body in self.bodies:
                    channel.basic_publish(exchange="", routing_key=self.queue, body=body, properties=kit.PERSISTENT)
                if registered >= self.workers:
                    self._wait_for_work(tarefas, watch, pool)
                time.sleep(0.05)  # the last ack reaches the broker
                returned_early = [w.name for w in pool if not w.alive]
                parar.set()
                deadline = time.monotonic() + self.stop_s
                stuck = [w.name for w in pool if not w.stop(timeout=max(0.0, deadline - time.monotonic()))]
                if stuck:
                    self._unstick(watch, pool)
            left_consumers = consumers() if channel.is_open else 0
        finally:
            parar.set()
            probe.close()
            bg.stop_all(timeout=1, quiet=True)

        hint = watch.thread_hint("worker")
        expect(hint is None, hint)
        expect(not watch.auto_ack(),
               f"worker() consumiu com auto_ack=True: o broker apaga cada tarefa ao entregá-la e, sem acks "
               f"pendentes, ignora o prefetch e empurra tudo para quem estiver na frente (e um basic_ack depois "
               f"fecha o canal: 406 'unknown delivery tag'). {phrases.MANUAL_ACK}")
        errors = [w.error for w in pool if w.error is not None and w.name not in stuck]  # stuck ones: closed by us
        if errors:
            raise AssertionError(_thread_failure("worker", errors[0]))
        expect(not tarefas.not_text, "processar deve receber o corpo como texto (str): use body.decode().")
        expect(watch.consumers,
               "Nenhum worker registrou um consumidor na fila: cada worker abre a sua conexão, "
               "channel.basic_qos(prefetch_count=1) e consome a fila (channel.consume(fila, inactivity_timeout=...) "
               "ou basic_consume + process_data_events).")
        expect(registered >= self.workers or not alive_at_start,
               f"Com dois workers rodando (as duas threads ainda no ar, sem voltar), o broker mostrou {registered} "
               f"consumidor(es) na fila '{self.queue}': cada worker precisa registrar um consumidor — "
               f"channel.consume(fila, inactivity_timeout=0.2) — e ficar nele até parar ser ligado (a verificação "
               f"só publica as tarefas quando os dois consumidores estão na fila). Buscar com basic_get num laço "
               f"não registra consumidor, e o broker não tem como dividir as tarefas com prefetch.")
        expect(not returned_early,
               f"{len(returned_early)} worker(s) ({', '.join(returned_early)}) voltaram antes de parar ser ligado: "
               f"um momento sem tarefa (um None de channel.consume(..., inactivity_timeout=0.2)) não quer dizer "
               f"que acabou — a próxima tarefa pode chegar no segundo seguinte. A cada None, olhe parar.is_set(): "
               f"só volte se ele estiver ligado; senão, continue (continue)."
               + (f" Por isso o broker mostrou só {registered} consumidor(es) na fila '{self.queue}' quando as "
                  f"tarefas chegaram." if registered < self.workers else ""))
        expect(registered >= self.workers,
               f"Com dois workers rodando, o broker mostrou {registered} consumidor(es) na fila '{self.queue}': "
               f"cada chamada de worker() deve registrar o seu consumidor e continuar consumindo até parar ser "
               f"ligado (a verificação só publica as tarefas quando os dois estão na fila). Um worker que volta "
               f"antes de parar.is_set() não atende a fila.")
        expect(not stuck,
               f"{len(stuck)} worker(s) não voltaram em {self.stop_s:.0f} s depois de parar.set() ({', '.join(stuck)}): o laço "
               f"precisa olhar parar.is_set() entre uma mensagem e outra — com channel.consume(fila, "
               f"inactivity_timeout=0.2), a cada None — e então cancelar o consumidor, fechar a conexão e voltar. "
               f"start_consuming() não olha nada e só volta com stop_consuming().")
        calls = tarefas.snapshot()
        done = Counter(c["corpo"] for c in calls)
        acks = [s for s in watch.settles if s.kind == "basic_ack"]
        expect(watch.settles or not calls,
               f"Nenhuma tarefa foi confirmada: os workers processaram {len(calls)} e pararam, porque cada um já "
               f"tinha o máximo de entregas sem ack que o prefetch permite. Depois de processar(corpo), "
               f"confirme: ch.basic_ack(delivery_tag=method.delivery_tag).")
        refused = Counter(s.kind for s in watch.settles if s.kind != "basic_ack")
        expect(not refused, f"worker() recusou tarefas ({dict(refused)}) em vez de confirmá-las: depois que "
                            f"processar voltar, confirme com basic_ack.")
        ahead = kit.settled_early(acks, [c["fim"] for c in calls])
        expect(not ahead,
               f"worker() confirmou tarefas antes de processar voltar (em algum momento, {ahead} ack(s) à frente "
               f"das tarefas terminadas): se o worker cair no meio, uma tarefa confirmada antes do trabalho se perde. "
               f"Chame basic_ack depois de processar(corpo).")
        missing = [b for b in self.bodies if b not in done]
        expect(not missing,
               f"{len(missing)} de {len(self.bodies)} tarefas nunca foram processadas ({kit.shown(missing[:3])}"
               f"{'...' if len(missing) > 3 else ''}). Cada uma precisa de um basic_ack depois de processar: sem "
               f"ele, o worker para quando atinge o prefetch, e as entregas voltam à fila quando a conexão fecha.")
        twice = sorted(b for b, n in done.items() if n > 1)
        expect(not twice, f"Tarefas processadas mais de uma vez: {kit.shown(twice)}. Cada entrega é processada e "
                          f"confirmada uma vez, no canal que a entregou.")
        expect(len(acks) == len(self.bodies),
               f"worker() fez {len(acks)} basic_ack para {len(self.bodies)} tarefas: uma por tarefa, depois de "
               f"processar.")
        long_end = next(c["fim"] for c in calls if c["corpo"].startswith("longa"))
        late = [c for c in calls if c["corpo"].startswith("curta") and c["fim"] > long_end]
        consuming = {key[0] for key in watch.deliveries}
        fair = bool(consuming) and all(qos.prefetch.get(c) == 1 for c in consuming)
        # With prefetch 1 on every consuming channel a busy worker gets nothing more: a short task
        # finishing late then only means a very slow machine, not a wrong answer.
        if late and not fair:
            by_worker: dict[str, list[str]] = {}
            for c in sorted(calls, key=lambda c: c["inicio"]):
                by_worker.setdefault(c["thread"].replace("curso-bg-", ""), []).append(c["corpo"])
            who = "; ".join(f"{w}: {', '.join(b)}" for w, b in sorted(by_worker.items()))
            expect(False,
                   f"{len(late)} tarefa(s) curta(s) ({kit.shown(c['corpo'] for c in late)}) esperaram atrás da tarefa "
                   f"longa ({str(self.long_s).replace('.', ',')} s), enquanto o outro worker podia fazê-las. Quem fez o quê: {who}. "
                   f"O broker entregou tarefas a um worker ocupado: sem basic_qos (ou com prefetch_count maior que "
                   f"1) cada worker recebe tarefas adiantadas, em rodízio. Com channel.basic_qos(prefetch_count=1), "
                   f"antes de consumir, cada worker só recebe a próxima quando confirma a anterior: distribuição "
                   f"justa.")
        leaked = kit.open_connections() - connections_before
        expect(left_consumers == 0 or not leaked,
               f"Depois que os workers voltaram, o broker ainda mostrava {left_consumers} consumidor(es) na fila "
               f"'{self.queue}', e {len(leaked)} conexão(ões) dos workers continuavam abertas: worker() não fechou a "
               f"sua conexão. Fechar a conexão também encerra o consumidor dela: antes de voltar, "
               f"connection.close() (ou `with pika.BlockingConnection(curso.params()) as connection:`).")
        expect(left_consumers == 0,
               f"Depois que os workers voltaram, o broker ainda mostrava {left_consumers} consumidor(es) na fila "
               f"'{self.queue}'. {phrases.CANCEL_CONSUMER}")
        expect(not leaked, f"worker() voltou deixando {len(leaked)} conexão(ões) aberta(s). "
                           f"{phrases.CLOSE_CONNECTION}")

    def _wait_for_work(self, tarefas: _Tarefas, watch: PikaWatch, pool) -> None:
        """Until every task is processed and acked, or nothing has moved for longer than the long task
        (workers stalled: no acks, so the prefetch holds them), or a worker ended."""
        n = len(self.bodies)
        deadline = time.monotonic() + self.long_s + 4
        last, moved = None, time.monotonic()
        while time.monotonic() < deadline:
            now = (len(tarefas.snapshot()), len(watch.settles))
            if now[0] >= n and sum(s.kind == "basic_ack" for s in watch.settles) >= n:
                return
            if not all(w.alive for w in pool):
                return
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > self.long_s + 0.4:
                return
            time.sleep(0.02)

    def _unstick(self, watch: PikaWatch, pool) -> None:
        """Close the connections of workers that ignored `parar` from their own thread (pika's one
        thread-safe call), so that they end instead of consuming on into the next exercise."""
        stuck = {w._thread for w in pool if w.alive}
        for connection, thread in list(watch.owners.values()):
            if thread in stuck and kit.is_open(connection):
                try:
                    connection.add_callback_threadsafe(connection.close)
                except Exception:  # noqa: BLE001 - already closing
                    pass
        deadline = time.monotonic() + 1.0
        for w in pool:
            w.stop(timeout=max(0.0, deadline - time.monotonic()))

    def verify(self, ctx: CheckContext) -> None:
        ready, consumers = kit.counts_of(ctx, self.queue)
        expect(consumers == 0, f"Ainda há {consumers} consumidor(es) na fila '{self.queue}': algum worker continua "
                               f"consumindo. {phrases.CANCEL_CONSUMER}")
        expect(ready == 0,
               f"Ficaram {ready} de {len(self.bodies)} tarefas prontas na fila '{self.queue}': não foram consumidas, "
               f"ou foram entregues sem ack e voltaram quando a conexão do worker fechou. {phrases.MANUAL_ACK}")
        if ctx.namespace is not None:
            return  # in the kernel, run() saw every ack, thread and connection exactly
        leaked = kit.connections_now(ctx) - self.before
        expect(not leaked, f"O broker ainda mostra {len(leaked)} conexão(ões) aberta(s) pelos workers. "
                           f"{phrases.CLOSE_CONNECTION}")
        q = ctx.queue_when(self.queue, lambda q: kit.no_ack_deliveries(q) or kit.stats(q).get("ack", 0) >= len(self.bodies))
        s, no_ack = kit.stats(q), kit.no_ack_deliveries(q)
        expect(no_ack == 0, f"{no_ack} tarefas foram entregues com auto_ack=True. {phrases.MANUAL_ACK} "
                            f"{phrases.STATS_MAY_LAG}")
        expect(s.get("ack", 0) == len(self.bodies),
               f"O broker registrou {s.get('ack', 0)} acks na fila '{self.queue}'; esperava {len(self.bodies)}, um "
               f"por tarefa. {phrases.STATS_MAY_LAG}")
        expect(s.get("redeliver", 0) == 0,
               f"O broker reentregou {s.get('redeliver', 0)} tarefa(s): entregas sem ack voltaram à fila. Confirme "
               f"cada tarefa uma vez, depois de processá-la. {phrases.STATS_MAY_LAG}")


# 6.2 ---------------------------------------------------------------------------------------------
def _subscribe_advice(exc: BaseException) -> str | None:
    text = f"{getattr(exc, 'reply_text', '')} {exc}"
    if "RESOURCE_LOCKED" in text:
        return ("Duas conexões tentaram usar a mesma fila exclusiva: com um nome fixo, o segundo assinante "
                "esbarra na fila do primeiro. Deixe o broker escolher um nome por assinante: "
                "channel.queue_declare(queue=\"\", exclusive=True) e use result.method.queue.")
    if "inequivalent arg" in text and "type" in text:
        return ("A exchange já existia com outro tipo: o tipo não muda depois de criada. Apague-a "
                "(channel.exchange_delete(exchange=...)) e declare de novo com exchange_type=\"fanout\".")
    return None


class AssinanteFanout(Exercise):
    id = "6.2"
    title = "assinar() e receber(): cada assinante recebe todos os eventos publicados enquanto ouvia."
    points = 2
    exchange = "avisos"
    early = ["aviso 1: loja aberta", "aviso 2: promoção", "aviso 3: estoque baixo"]
    late = ["aviso 4: loja fechando", "aviso 5: fim da promoção"]
    keys = ["", "pedido.criado", "qualquer.coisa", "", "x"]  # a fanout ignores them
    silence = 0.2
    call_timeout = 2.0

    def run(self, ctx: CheckContext) -> None:
        ctx.management.delete_exchange(self.exchange)
        subscribers = [kit.CheckConnection(ctx) for _ in range(3)]
        try:
            channels = [s.connection.channel() for s in subscribers]
            first = self._subscribe(ctx, channels[0], "1º")
            second = self._subscribe(ctx, channels[1], "2º")
            expect(first != second,
                   f"Os dois assinantes receberam a mesma fila ('{first}'): numa fila compartilhada, os eventos se "
                   f"dividem entre eles (consumidores concorrentes). Cada assinante precisa da sua fila: "
                   f"channel.queue_declare(queue=\"\", exclusive=True).")
            with kit.CheckConnection(ctx) as publisher:
                ch = publisher.channel()
                for body, key in zip(self.early, self.keys):
                    ch.basic_publish(exchange=self.exchange, routing_key=key, body=body)
                third = self._subscribe(ctx, channels[2], "3º (atrasado)")
                for body, key in zip(self.late, self.keys[len(self.early):]):
                    ch.basic_publish(exchange=self.exchange, routing_key=key, body=body)
            got = []
            for i, (channel, queue) in enumerate(zip(channels, (first, second, third)), start=1):
                closes = kit.record_calls(channel, "close")
                received = ctx.call("receber", channel, queue, self.silence, timeout=self.call_timeout)
                expect(channel.is_open,
                       "receber() fechou o canal que recebeu: uma função não fecha um canal que não abriu. "
                       + ("" if closes else "(O broker o fechou: confira as chamadas de ack.) ")
                       + phrases.CANCEL_CONSUMER)
                ok = channel.queue_declare(queue=queue, passive=True).method
                left, ready = ok.consumer_count, ok.message_count
                expect(left == 0, f"Depois que receber() voltou, ainda havia {left} consumidor(es) na fila "
                                  f"'{queue}': o broker continua entregando a ele. {phrases.CANCEL_CONSUMER}")
                # Closing the channel puts back what it was handed and never acked (exact: the queue is
                # exclusive to this connection, and a passive declare after close-ok counts them).
                channel.close()
                unacked = subscribers[i - 1].connection.channel().queue_declare(
                    queue=queue, passive=True).method.message_count - ready
                expect(unacked == 0,
                       f"receber() deixou {unacked} evento(s) entregues e sem ack na fila '{queue}': consumiu com "
                       f"auto_ack=False (o padrão de channel.consume) e não confirmou nenhum; quando o canal fechou, "
                       f"eles voltaram à fila. Um assinante que só lê consome com auto_ack=True "
                       f"(channel.consume(fila, auto_ack=True, inactivity_timeout=silencio)); com auto_ack=False, "
                       f"confirme cada um: channel.basic_ack(delivery_tag=method.delivery_tag).")
                got.append(received)
        finally:
            for s in subscribers:
                s.close()

        for received in got:
            expect(isinstance(received, list), f"receber() deveria devolver uma lista, devolveu "
                                               f"{type(received).__name__}.")
            expect(all(isinstance(b, str) for b in received),
                   "receber() deve devolver os corpos como texto (str): use body.decode().")
        everything = self.early + self.late
        for who, received, wanted in (("1º", got[0], everything), ("2º", got[1], everything),
                                      ("3º (atrasado)", got[2], self.late)):
            if received == wanted:
                continue
            missing = [b for b in wanted if b not in received]
            extra = [b for b in received if b not in wanted]
            if not received:
                expect(False, f"O {who} assinante não recebeu nada. Publiquei {len(everything)} eventos na exchange "
                              f"'{self.exchange}' e nenhum chegou à fila dele: ela está ligada à exchange "
                              f"(channel.queue_bind(exchange=exchange, queue=fila))? receber() espera "
                              f"{self.silence} s sem mensagem nova antes de voltar?")
            if len(received) < len(wanted) and received == wanted[:len(received)]:
                expect(False, f"receber() voltou cedo demais para o {who} assinante: recebeu {kit.shown(received)} e "
                              f"parou, mas ainda vinham {kit.shown(missing)}. Consuma até passar `silencio` segundos sem "
                              f"mensagem nova (channel.consume(fila, inactivity_timeout=silencio) e pare no primeiro "
                              f"None).")
            expect(not extra, f"O {who} assinante recebeu {kit.shown(extra)}, que foram publicados antes de ele assinar: "
                              f"cada assinante recebe só o que for publicado depois de a fila dele existir — uma "
                              f"fila nova por assinante, criada em assinar().")
            expect(False, f"O {who} assinante recebeu {kit.shown(received)}; esperava {kit.shown(wanted)}, na ordem.")

    def _subscribe(self, ctx: CheckContext, channel, who: str) -> str:
        queue = ctx.call("assinar", channel, self.exchange, advice=_subscribe_advice, timeout=self.call_timeout)
        expect(isinstance(queue, str) and queue,
               f"assinar() devolveu {queue!r}; esperava o nome da fila do assinante (result.method.queue).")
        self._expect_exchange(ctx)
        record = ctx.queue(queue)
        expect(record is not None, f"assinar() devolveu '{queue}', mas essa fila não existe no broker.")
        expect(record.get("exclusive"),
               f"A fila do {who} assinante ('{queue}') não é exclusiva: uma fila de assinante que só quer os eventos "
               f"enquanto está no ar é exclusive=True (o broker a apaga quando a conexão fecha); uma fila durável "
               f"com nome fixo guardaria eventos para sempre de quem nunca volta.")
        expect(queue.startswith("amq.gen-"),
               f"A fila do {who} assinante se chama '{queue}', um nome fixo: com ele, o próximo assinante esbarraria "
               f"nesta fila (exclusiva de outra conexão). Deixe o broker escolher: channel.queue_declare(queue=\"\", "
               f"exclusive=True) e use result.method.queue.")
        bound = [b for b in kit.bindings_from(ctx, self.exchange) if b["destination"] == queue]
        expect(bound, f"A fila '{queue}' do {who} assinante não está ligada à exchange '{self.exchange}': sem "
                      f"binding, nenhum evento chega a ela. channel.queue_bind(exchange=exchange, queue=fila).")
        return queue

    def _expect_exchange(self, ctx: CheckContext) -> None:
        info = ctx.management.exchange_or_none(self.exchange)
        expect(info is not None,
               f"A exchange '{self.exchange}' não existe no broker. assinar(channel, exchange) deve declará-la: "
               f"channel.exchange_declare(exchange=exchange, exchange_type=\"fanout\", durable=True).")
        expect(info.get("type") == "fanout",
               f"A exchange '{self.exchange}' é do tipo '{info.get('type')}'; publish/subscribe é fanout: ela entrega "
               f"uma cópia a toda fila ligada, qualquer que seja a routing key (os eventos da verificação vêm com "
               f"chaves variadas). Apague-a e declare com exchange_type=\"fanout\".")
        expect(info.get("durable"),
               f"A exchange '{self.exchange}' não é durável: ela sumiria num reinício do broker, e quem publica "
               f"nela teria o canal fechado (404). Declare-a com durable=True.")

    def verify(self, ctx: CheckContext) -> None:
        # The subscribers' exclusive queues died with their connections: only the exchange is left.
        self._expect_exchange(ctx)


# 6.3 ---------------------------------------------------------------------------------------------
def _bus_advice(exc: BaseException) -> str | None:
    text = f"{getattr(exc, 'reply_text', '')} {exc}"
    if "no exchange 'barramento'" in text:
        return ("A exchange 'barramento' não existia quando a fila foi ligada a ela (a verificação começa sem ela): "
                "declare a exchange antes do queue_bind, no começo de ligar_servico() — "
                "channel.exchange_declare(exchange='barramento', exchange_type='topic', durable=True).")
    return None


class BarramentoDeEventos(Exercise):
    id = "6.3"
    title = "ligar_servico() e interesses: cada serviço recebe do barramento só os eventos que pediu."
    points = 2
    exchange = "barramento"
    swap_queue = "servico_teste"
    rules = {
        "cobranca": "os pedidos pagos, de qualquer região",
        "sac": "tudo que for cancelado: qualquer entidade, qualquer região",
        "nordeste": "todos os eventos da região nordeste",
        "estoque": "os pedidos criados e os cancelados, de qualquer região, e todos os eventos da entidade estoque",
        "auditoria": "todos os eventos",
    }
    # More keys than the statement shows (other regions and entities), same convention.
    keys = ["pedido.sul.criado", "pedido.nordeste.pago", "pedido.centro-oeste.pago", "pedido.norte.pago",
            "pedido.centro-oeste.cancelado", "estoque.nordeste.baixo", "estoque.sul.reposto",
            "cliente.nordeste.criado", "cliente.norte.cancelado", "pagamento.sul.pago",
            "pedido.nordeste.enviado", "entrega.sul.cancelado", "pedido.amazonia.criado", "pedido.amazonia.pago",
            "entrega.nordeste.saiu"]
    patterns = {"cobranca": ["pedido.*.pago"], "sac": ["*.*.cancelado"], "nordeste": ["*.nordeste.*"],
                "estoque": ["pedido.*.criado", "pedido.*.cancelado", "estoque.*.*"], "auditoria": ["#"]}
    call_timeout = 5.0

    @property
    def queues(self) -> list[str]:
        return list(self.rules)

    def expected(self) -> dict[str, list[str]]:
        return {q: [k for k in self.keys if any(kit.topic_matches(p, k) for p in self.patterns[q])] for q in self.queues}

    def run(self, ctx: CheckContext) -> None:
        interesses = ctx.learner("interesses", "variável")
        expect(isinstance(interesses, dict),
               f"`interesses` deveria ser um dicionário {{serviço: [padrões]}}, mas é {type(interesses).__name__}.")
        names = sorted(map(str, interesses))
        expect(names == sorted(self.queues),
               f"`interesses` tem os serviços {names}; esperava exatamente {sorted(self.queues)}.")
        for service, patterns in interesses.items():
            expect(isinstance(patterns, (list, tuple)) and patterns and all(isinstance(p, str) for p in patterns),
                   f"interesses[{service!r}] deveria ser uma lista de padrões (textos), como [\"pedido.*.pago\"]; é "
                   f"{patterns!r}.")
        kit.reset_topology(ctx, [self.exchange], [*self.queues, self.swap_queue])
        with kit.learner_channel(ctx, "ligar_servico()") as channel:
            first, second = ["reserva.*.feita", "reserva.*.paga"], ["reserva.*.paga", "reserva.#"]
            ctx.call("ligar_servico", channel, self.swap_queue, first, advice=_bus_advice, timeout=self.call_timeout)
            self._expect_exchange(ctx)
            kit.expect_durable_queue(ctx, self.swap_queue, "ligar_servico()")
            # An event waiting in the queue: changing the subscription must not lose it.
            channel.basic_publish(exchange="", routing_key=self.swap_queue, body="reserva.sul.paga",
                                  properties=kit.PERSISTENT)
            ctx.call("ligar_servico", channel, self.swap_queue, second, advice=_bus_advice, timeout=self.call_timeout)
            waiting = channel.queue_declare(queue=self.swap_queue, passive=True).method.message_count
            expect(waiting == 1,
                   f"Antes da segunda chamada de ligar_servico(channel, '{self.swap_queue}', ...) havia 1 evento "
                   f"esperando na fila; depois dela, a fila tinha {waiting}: trocar a assinatura apagou o que "
                   f"esperava. Não apague nem recrie a fila do serviço: mude só os bindings — queue_bind para os "
                   f"padrões novos e channel.queue_unbind(exchange='{self.exchange}', queue=servico, "
                   f"routing_key=padrao) para os que saíram.")
            keys = sorted(b["routing_key"] for b in kit.bindings_from(ctx, self.exchange)
                          if b["destination"] == self.swap_queue)
            expect("reserva.*.feita" not in keys,
                   f"Chamei ligar_servico(channel, '{self.swap_queue}', {first}) e depois com {second}: a fila ficou "
                   f"com as binding keys {keys}. A segunda chamada deveria trocar a assinatura, mas "
                   f"'reserva.*.feita' continuou ligada. Desfaça os bindings que não estão na lista nova: leia os "
                   f"atuais (ou guarde-os) e chame channel.queue_unbind(exchange='{self.exchange}', queue=servico, "
                   f"routing_key=padrao) para cada um.")
            expect(keys == sorted(second),
                   f"Depois de ligar_servico(channel, '{self.swap_queue}', {second}), a fila tem as binding keys "
                   f"{keys}; esperava exatamente {sorted(second)}.")
            channel.queue_delete(queue=self.swap_queue)
            for service in self.queues:
                ctx.call("ligar_servico", channel, service, list(interesses[service]), advice=_bus_advice,
                         timeout=self.call_timeout)

    def _expect_exchange(self, ctx: CheckContext) -> None:
        info = ctx.management.exchange_or_none(self.exchange)
        expect(info is not None, f"A exchange '{self.exchange}' não existe (a verificação a apaga e chama "
                                 f"ligar_servico(), que deve declará-la) com "
                                 f"channel.exchange_declare(exchange='{self.exchange}', exchange_type='topic', "
                                 f"durable=True).")
        expect(info.get("type") == "topic",
               f"A exchange '{self.exchange}' é do tipo '{info.get('type')}'; um barramento com padrões * e # é uma "
               f"exchange topic. Apague-a (channel.exchange_delete(exchange='{self.exchange}')) e declare com "
               f"exchange_type='topic'.")
        expect(info.get("durable"), f"A exchange '{self.exchange}' não é durável: ela e os bindings de todos os "
                                    f"serviços sumiriam num reinício do broker. Declare-a com durable=True.")

    def verify(self, ctx: CheckContext) -> None:
        self._expect_exchange(ctx)
        for queue in self.queues:
            expect(ctx.queue(queue) is not None,
                   f"A fila '{queue}' não existe: a verificação cria as filas chamando ligar_servico(canal, servico, "
                   f"interesses[servico]) para cada serviço; se ela parou antes, a mensagem dela diz por quê.")
            kit.expect_durable_queue(ctx, queue, "ligar_servico()")
        received = kit.probe_routing(ctx, [(self.exchange, key, None, key) for key in self.keys], self.queues)
        expected = self.expected()
        for queue in self.queues:
            got, wanted = received[queue], expected[queue]
            if got == wanted:
                continue
            keys = [b["routing_key"] for b in kit.bindings_from(ctx, self.exchange) if b["destination"] == queue]
            missing = [k for k in wanted if k not in got]
            extra = [k for k in got if k not in wanted]
            parts = []
            if missing:
                parts.append(f"não recebeu {kit.shown(missing)}")
            if extra:
                parts.append(f"recebeu {kit.shown(extra)}, que não deveria")
            hint = (f"Publiquei {len(self.keys)} eventos no barramento (alguns além dos do enunciado: outras regiões "
                    f"e entidades, na mesma convenção <entidade>.<região>.<evento>) e a fila '{queue}' "
                    f"{' e '.join(parts)}. Ela deve receber {self.rules[queue]}. Binding keys dela no broker: "
                    f"{keys or 'nenhuma'}. Lembre: * casa exatamente uma palavra, # zero ou mais.")
            wrong = [k for k in keys if any(kit.topic_matches(k, e) for e in extra)]
            if wrong:
                hint += f" Quem traz o que não deveria: {kit.shown(wrong)}."
            regions = {m.split(".")[1] for m in missing}
            listed = [k.split(".") for k in keys if k.count(".") == 2]
            if missing and listed and all(w[1] not in ("*", "#") for w in listed) and \
                    not any(m.split(".")[1] in {w[1] for w in listed} for m in missing):
                hint += (f" Listar as regiões não basta: regiões novas ({', '.join(sorted(regions))}) aparecem sem "
                         f"aviso. Use * no lugar da região.")
            entities = {m.split(".")[0] for m in missing}
            any_entity = all(p.split(".")[0] in ("*", "#") for p in self.patterns[queue])
            if missing and listed and any_entity and all(w[0] not in ("*", "#") for w in listed) and \
                    not any(m.split(".")[0] in {w[0] for w in listed} for m in missing):
                hint += (f" Listar as entidades não basta: entidades novas ({', '.join(sorted(entities))}) aparecem "
                         f"sem aviso. Use * no lugar da entidade.")
            expect(False, hint)


# 6.4 ---------------------------------------------------------------------------------------------
DECOY = "RESPOSTA DE OUTRO PEDIDO"


def _rpc_advice(exc: BaseException) -> str | None:
    text = f"{getattr(exc, 'reply_text', '')} {exc}"
    if "fast reply consumer does not exist" in text:
        return ("Com direct reply-to, o consumidor de 'amq.rabbitmq.reply-to' tem de estar registrado ANTES de "
                "publicar o pedido, no MESMO canal. Cuidado: o gerador channel.consume(...) só registra o "
                "consumidor na primeira volta do for; use channel.basic_consume(queue='amq.rabbitmq.reply-to', "
                "on_message_callback=..., auto_ack=True) antes do basic_publish.")
    if "reply consumer cannot acknowledge" in text:
        return "O consumidor de 'amq.rabbitmq.reply-to' tem de usar auto_ack=True: respostas não se confirmam."
    if "invalid expiration" in text or "non-string value was supplied for self.expiration" in text:
        return ("expiration é um texto com um número inteiro de milissegundos: para timeout=1.0, "
                "expiration=\"1000\" — str(int(timeout * 1000)).")
    if "RESOURCE_LOCKED" in text:
        return "Essa fila é exclusiva de outra conexão: deixe o broker escolher o nome (queue=\"\", exclusive=True)."
    return None


def _expect_channel_open(channel) -> None:
    """Fail with the broker's reason when it closed the channel during the learner's call (a
    publish the broker refuses closes the channel without an exception in the publisher)."""
    if channel.is_open:
        return
    reason = getattr(channel, "_closing_reason", None)  # pika keeps it; the next call would raise it
    if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
        text = phrases.channel_closed("chamar", reason.reply_code, reason.reply_text)
        raise AssertionError(f"{text} {_rpc_advice(reason) or ''}".rstrip())
    raise AssertionError("Durante `chamar` o canal que ela recebeu foi fechado: uma função não fecha um canal que "
                         "não abriu.")


class _TimedOut:
    """What the guarded learner function returns when it raises TimeoutError."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class _Guarded:
    """A CheckContext look-alike for kit.call whose learner function turns TimeoutError into a value
    (the statement asks for TimeoutError; every other exception stays a hint)."""

    def __init__(self, ctx: CheckContext, name: str):
        fn = ctx.learner(name)
        expect(callable(fn), phrases.not_callable(name, type(fn).__name__))
        self.ctx, self.call_timeout, self.timed_out = ctx, ctx.call_timeout, False

        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except TimeoutError as exc:
                return _TimedOut(exc)
            except AssertionError as exc:
                if "self.expiration" in str(exc):  # pika's own type check of the property
                    raise TypeError(str(exc)) from None
                raise

        self.fn = guarded

    def learner(self, name: str, what: str = "função"):
        return self.fn


def _rpc_server(url: str, queue: str, record_queue: str, ready: threading.Event, log: list,
                stop_event: threading.Event) -> None:
    """A real RPC server: answers each request on `queue` with a decoy (another correlation_id)
    and then the request upper-cased; keeps a record of each request's properties in `log` and in
    the durable `record_queue` (the broker's evidence for the grader)."""
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": "curso verificação servidor-rpc"}
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        consumer = channel.consume(queue, inactivity_timeout=0.05)
        next(consumer)  # registers the consumer before anyone publishes
        ready.set()
        for method, properties, body in consumer:
            if stop_event.is_set():
                break
            if method is None:
                continue
            record = {"correlation_id": properties.correlation_id, "reply_to": properties.reply_to,
                      "expiration": properties.expiration, "body": body.decode("utf-8", "replace")}
            log.append(record)
            channel.basic_publish(exchange="", routing_key=record_queue, body=json.dumps(record),
                                  properties=kit.PERSISTENT)
            if properties.reply_to:
                channel.basic_publish(exchange="", routing_key=properties.reply_to, body=DECOY,
                                      properties=pika.BasicProperties(correlation_id=f"outro-{properties.correlation_id}"))
                channel.basic_publish(exchange="", routing_key=properties.reply_to, body=record["body"].upper(),
                                      properties=pika.BasicProperties(correlation_id=properties.correlation_id))
            channel.basic_ack(delivery_tag=method.delivery_tag)
        channel.cancel()


def _late_decoy(url: str, queue: str, delay: float, ready: threading.Event, sent: list, called: list,
                stop_event: threading.Event) -> None:
    """A stale reply for a request nobody serves: watches `queue` (basic_get, the request put back at
    once, so that it still expires on time: a requeued message keeps its expiry), and publishes a
    reply of another request to its reply_to `delay` seconds after the learner's call started
    (`called[0]`; at once if that moment has passed): timed from the call, not from when this thread
    saw the request, which a loaded machine delays."""
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": "curso verificação resposta-atrasada"}
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        ready.set()
        while not stop_event.is_set():
            method, properties, _ = channel.basic_get(queue=queue, auto_ack=False)
            if method is None:
                stop_event.wait(0.01)
                continue
            seen = time.monotonic()
            channel.basic_nack(delivery_tag=method.delivery_tag, requeue=True)
            start = called[0] if called else seen
            if properties.reply_to and not stop_event.wait(max(0.0, start + delay - time.monotonic())):
                channel.basic_publish(exchange="", routing_key=properties.reply_to, body=DECOY,
                                      properties=pika.BasicProperties(correlation_id=f"antigo-{properties.correlation_id}"))
                sent.append(time.monotonic() - start)
            return


class ClienteRPC(Exercise):
    id = "6.4"
    title = "chamar() faz RPC com correlation_id, prazo e expiration, com o servidor no ar e fora dele."
    points = 3
    queue = "rpc_maiusculas"
    records = "rpc_registro"
    dead = "rpc_parado"
    expired = "rpc_expirados"
    requests = [("olá, rabbit", 1.0), ("segunda chamada", 1.0)]
    # With the server down, the call must raise TimeoutError within dead_slack of dead_timeout. A stale
    # reply comes late_decoy s into the call: it ends a pass of process_data_events, so that an answer
    # that waits the whole timeout again on each pass (or a fixed time_limit) overshoots by
    # late_decoy > dead_slack. Margins of 0.3-0.4 s on both sides hold on a loaded 2-core machine
    # (with a 0.5 s timeout and the reply 0.4 s in, a late reply there made such an answer pass).
    dead_timeout = 1.0
    late_decoy = 0.6
    dead_slack = 0.3
    call_timeout = 2.0

    def run(self, ctx: CheckContext) -> None:
        guarded = _Guarded(ctx, "chamar")
        kit.fresh_queue(ctx, self.queue)
        kit.fresh_queue(ctx, self.records)
        kit.fresh_queue(ctx, self.expired)
        kit.fresh_queue(ctx, self.dead, arguments=kit.dead_letter_to(self.expired))
        bg = Background(ctx.curso)
        ready, log = threading.Event(), []
        server = bg.thread("servidor-rpc", _rpc_server, ctx.curso.url, self.queue, self.records, ready, log)
        check = kit.CheckConnection(ctx)
        try:
            expect(ready.wait(5), f"O servidor da verificação não subiu: {server.output()[-300:]}")
            channel = check.connection.channel()
            for n, (pedido, timeout) in enumerate(self.requests):
                before = len(log)
                start = time.monotonic()
                result = kit.call(guarded, "chamar", channel, self.queue, pedido, timeout, advice=_rpc_advice,
                                  timeout=timeout + 1.0,
                                  on_timeout=lambda: self._live_timeout(log, before, timeout))
                elapsed = time.monotonic() - start
                ctx.timed_out = guarded.timed_out
                _expect_channel_open(channel)
                self._judge_live(channel, log[before:], pedido, timeout, result, elapsed)
            ids = [r["correlation_id"] for r in log]
            expect(len(set(ids)) == len(ids),
                   f"As {len(ids)} chamadas usaram o mesmo correlation_id ({ids[0]!r}): cada pedido precisa de um "
                   f"novo, como str(uuid.uuid4()), ou a resposta de um pedido antigo passa pela do novo.")
            server.stop(timeout=2)
            expect(not server.alive, "O servidor da verificação não parou.")
            self._judge_dead(ctx, guarded, channel, bg)
        finally:
            check.close()
            bg.stop_all(timeout=1, quiet=True)

    def _judge_live(self, channel, seen: list[dict], pedido: str, timeout: float, result, elapsed: float) -> None:
        if isinstance(result, _TimedOut) and elapsed < timeout - 0.1:
            expect(False, f"chamar() levantou TimeoutError depois de {phrases.decimal(elapsed, 2)} s, antes do prazo "
                          f"(timeout={timeout}), com o servidor no ar, que responde a cada pedido duas vezes: primeiro "
                          f"com a resposta de outro pedido, depois com a certa. process_data_events(time_limit=...) volta "
                          f"assim que trata um evento (como a resposta do outro pedido), não quando a sua chega: "
                          f"não desista depois da primeira volta. Repita num laço — while not resposta: restante = "
                          f"prazo - time.monotonic(); se restante <= 0, TimeoutError; senão "
                          f"process_data_events(time_limit=restante).")
        expect(seen, f"chamar(channel, '{self.queue}', {pedido!r}, {timeout}) não publicou nenhum pedido na fila "
                     f"'{self.queue}' (o servidor não recebeu nada). Publique na exchange padrão: "
                     f"channel.basic_publish(exchange=\"\", routing_key=fila, body=pedido, properties=...).")
        request = seen[0]
        expect(request["reply_to"],
               "O pedido chegou ao servidor sem reply_to: ele não tem para onde responder. Publique com "
               "properties=pika.BasicProperties(reply_to=<a sua fila de respostas>, correlation_id=...) — uma fila "
               "exclusiva com nome do servidor, ou 'amq.rabbitmq.reply-to' (consumida antes de publicar).")
        expect(request["correlation_id"],
               "O pedido chegou ao servidor sem correlation_id: sem ele, o cliente não sabe qual resposta é a do seu "
               "pedido. Publique com correlation_id=str(uuid.uuid4()) e compare properties.correlation_id na resposta.")
        if isinstance(result, _TimedOut):
            expect(False, f"chamar() levantou TimeoutError com o servidor no ar: ele recebeu o pedido e respondeu "
                          f"(duas mensagens na fila de respostas: uma de outro pedido e a certa, com o correlation_id "
                          f"{request['correlation_id']!r}), mas a resposta não foi reconhecida em {phrases.decimal(timeout)} s. Consuma a "
                          f"fila que está no reply_to e aceite a mensagem cujo properties.correlation_id é o do pedido.")
        expect(result != DECOY and result != DECOY.encode(),
               f"chamar() devolveu {DECOY!r}: a primeira resposta que chegou, de outro pedido (correlation_id "
               f"'outro-...'). Respostas atrasadas de pedidos antigos chegam à mesma fila: aceite só a que tem o "
               f"correlation_id do pedido que você publicou e descarte as outras.")
        expect(isinstance(result, str), f"chamar() devolveu {type(result).__name__} ({result!r}); esperava o corpo "
                                        f"da resposta como texto (str): use body.decode().")
        expect(result == pedido.upper(), f"chamar() devolveu {result!r}; o servidor respondeu {pedido.upper()!r}.")
        expiration = request["expiration"]
        wanted = str(int(timeout * 1000))
        expect(expiration is not None,
               f"O pedido foi publicado sem expiration: se o servidor estiver fora do ar, ele fica na fila depois que "
               f"o cliente desistiu e é processado para ninguém. Publique com expiration=\"{wanted}\" "
               f"(str(int(timeout * 1000)): o prazo, em milissegundos, como texto).")
        expect(expiration == wanted,
               f"O pedido foi publicado com expiration={expiration!r}; para timeout={timeout} o prazo é "
               f"{wanted!r}: milissegundos, como texto (str(int(timeout * 1000))).")
        consumers = list(channel.consumer_tags)
        expect(not consumers,
               f"Depois que chamar() voltou, o canal ainda tinha {len(consumers)} consumidor(es) registrado(s): cada "
               f"chamada deixaria mais um. Antes de voltar, cancele o consumidor das respostas "
               f"(channel.basic_cancel(tag)).")

    def _live_timeout(self, log: list, before: int, timeout: float) -> str:
        seen = log[before:]
        if seen and not seen[0]["reply_to"]:
            return (f"chamar() não voltou em {timeout + 1:.0f} s com o servidor no ar: o pedido chegou sem reply_to, e o "
                    f"servidor não tinha para onde responder. E, sem resposta, chamar() deveria levantar TimeoutError "
                    f"depois de timeout segundos.")
        return (f"chamar() não voltou em {timeout + 1:.0f} s (timeout={timeout}): espere a resposta com prazo — "
                f"connection.process_data_events(time_limit=restante) num laço até a resposta chegar ou o prazo "
                f"acabar — e então levante TimeoutError.")

    def _judge_dead(self, ctx: CheckContext, guarded: _Guarded, channel, bg: Background) -> None:
        ready, sent, called = threading.Event(), [], []
        decoy = bg.thread("resposta-atrasada", _late_decoy, ctx.curso.url, self.dead, self.late_decoy, ready, sent,
                          called)
        expect(ready.wait(5), f"A verificação não conseguiu se conectar: {decoy.output()[-300:]}")
        start = time.monotonic()
        called.append(start)
        result = kit.call(guarded, "chamar", channel, self.dead, "alguém aí?", self.dead_timeout, advice=_rpc_advice,
                          timeout=self.call_timeout,
                          on_timeout=lambda: (f"Com o servidor fora do ar, chamar(channel, '{self.dead}', ..., "
                                              f"{self.dead_timeout}) não voltou em {phrases.decimal(self.call_timeout)} s: depois de "
                                              f"timeout segundos sem resposta, levante TimeoutError (raise "
                                              f"TimeoutError(...)); nunca espere para sempre."))
        ctx.timed_out = guarded.timed_out
        elapsed = time.monotonic() - start
        decoy.stop(timeout=1)
        _expect_channel_open(channel)
        late = (f" (uma resposta atrasada de outro pedido chegou {phrases.decimal(self.late_decoy)} s depois do início da chamada, e depois "
                f"mais nada)" if sent else "")
        expect(result != DECOY and result != DECOY.encode(),
               f"Com o servidor fora do ar, chamar() devolveu {DECOY!r}: uma resposta atrasada de outro pedido "
               f"(correlation_id 'antigo-...'). Aceite só a que tem o correlation_id do pedido que você publicou.")
        expect(isinstance(result, _TimedOut),
               f"Com o servidor fora do ar{late}, chamar() devolveu {result!r} depois de {phrases.decimal(elapsed)} s; esperava que "
               f"levantasse TimeoutError depois de timeout={self.dead_timeout} s (raise TimeoutError(...)): quem chama "
               f"precisa saber que não houve resposta.")
        expect(elapsed < self.dead_timeout + self.dead_slack,
               f"Com o servidor fora do ar{late}, chamar() levou {phrases.decimal(elapsed, 2)} s para levantar TimeoutError; pedi "
               f"timeout={self.dead_timeout} s. O prazo vale para a chamada inteira, contado do início: guarde prazo = "
               f"time.monotonic() + timeout antes do laço e, a cada volta, espere só o que falta — "
               f"process_data_events(time_limit=prazo - time.monotonic()). Um time_limit fixo, ou o timeout inteiro "
               f"de novo a cada volta, passa do prazo.")
        expect(elapsed > self.dead_timeout - 0.1,
               f"Com o servidor fora do ar{late}, chamar() levantou TimeoutError depois de {phrases.decimal(elapsed, 2)} s; pedi "
               f"timeout={self.dead_timeout} s. process_data_events(time_limit=...) volta assim que trata um evento: "
               f"repita num laço até a sua resposta chegar ou o prazo acabar.")
        consumers = list(channel.consumer_tags)
        expect(not consumers, f"Depois do TimeoutError, o canal ainda tinha {len(consumers)} consumidor(es) "
                              f"registrado(s): cancele o consumidor das respostas também quando o prazo acaba "
                              f"(try/finally).")

    def verify(self, ctx: CheckContext) -> None:
        ready, _ = kit.counts_of(ctx, self.records)
        records = [json.loads(kit.payload_text(m)) for m in ctx.management.peek(self.records, 10)] if ready else []
        expect(len(records) >= len(self.requests),
               f"O servidor da verificação recebeu {len(records)} dos {len(self.requests)} pedidos que ela faz com ele "
               f"no ar (fila '{self.queue}'): ela para no primeiro problema que encontra, e a mensagem dela diz qual; "
               f"ou os pedidos não foram publicados na exchange padrão com routing_key=fila.")
        expect(all(r.get("reply_to") for r in records), "Pedidos chegaram ao servidor sem reply_to: ele não tem para "
                                                        "onde responder.")
        ids = [r.get("correlation_id") for r in records]
        expect(all(ids) and len(set(ids)) == len(ids),
               f"Os pedidos chegaram ao servidor com os correlation_id {ids}: cada pedido precisa de um, e diferente "
               f"dos outros (str(uuid.uuid4())).")
        expect(all(r.get("expiration") == str(int(t * 1000)) for r, (_, t) in zip(records, self.requests)),
               f"Os pedidos chegaram com expiration {[r.get('expiration') for r in records]}; esperava "
               f"{[str(int(t * 1000)) for _, t in self.requests]} (o prazo, em milissegundos, como texto).")
        # The request made while the server was down: it expired in the queue and was dead-lettered.
        dead = ctx.eventually(lambda: (kit.exact_counts(ctx, self.dead), kit.exact_counts(ctx, self.expired)),
                              lambda v: v[0] is not None and v[1] is not None and v[1][0] >= 1 and v[0][0] == 0,
                              timeout=2.0)
        expect(dead[0] is not None and dead[1] is not None, phrases.queue_missing(self.dead))
        waiting, expired = dead[0][0], dead[1][0]
        expect(waiting == 0,
               f"O pedido feito com o servidor fora do ar continua na fila '{self.dead}' depois do prazo: quando um "
               f"servidor voltar, vai processá-lo para ninguém. Publique com expiration=str(int(timeout * 1000)), e "
               f"o broker o descarta quando o prazo do cliente acaba.")
        expect(expired == 1,
               f"Esperava exatamente 1 pedido expirado (o da chamada com o servidor fora do ar) em '{self.expired}', "
               f"para onde o broker manda o que expira em '{self.dead}'; há {expired}.")
