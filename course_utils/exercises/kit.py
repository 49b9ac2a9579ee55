"""The check kit: what the checks of every chapter share.

A chapter's module (`chapters/capNN.py`) holds its exercises' data, expectations and hints; the
ways of calling the learner's code, preparing the broker and reading it back live here, once.

Reading the broker, fastest first:
- exact and at once: `exact_counts` (a passive queue_declare: ready messages and consumers),
  and the definitions the management API returns (queues, exchanges, bindings, users);
- only through statistics, which lag one collection interval: unacked counts, ack/deliver/
  confirm counters, connection lists. Read those with `CheckContext.eventually` in one bounded
  window and say in the hint that the figure may lag (`phrases.STATS_MAY_LAG`).
"""
from __future__ import annotations

import base64
import contextlib
import dis
import functools
import gc
import inspect
import os
import signal
import sqlite3
import threading
import time
import types
import uuid
from typing import Any, Callable, Iterable, Iterator, Mapping

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ..errors import CourseError, StrictModeError
from ..management import ManagementError
from ..native import pid_alive
from ..sandbox import close_quietly  # noqa: F401 - the kit's, too: closing never raises
from . import phrases

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

# advice: extra sentences for exceptions the learner's code lets escape, by exception class, or a
# function of the exception that returns a sentence (or None).
Advice = "Mapping[type, str] | Callable[[BaseException], str | None] | None"


# --- calling the learner's code ------------------------------------------------------------------

class _Timeout(BaseException):
    """Raised by the alarm in the learner's call. A BaseException, so that a learner's
    `except Exception:` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` with `_Timeout` (main thread on Unix; elsewhere no limit)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    # The alarm repeats every 0.25 s until the block ends: a _Timeout raised while the interpreter
    # happens to run a finalizer or a weakref callback (a learner's poison loop makes plenty of
    # garbage) is printed and dropped by Python, and a one-shot alarm then left the loop running
    # until the suite's own timeout (seen once in a fresh-clone run of the suite).
    armed = [True]

    def on_alarm(signum, frame):
        if armed:
            raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.25)
    try:
        yield
    finally:
        armed.clear()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _advice_for(advice, exc: BaseException) -> str:
    if advice is None:
        return ""
    if callable(advice) and not isinstance(advice, Mapping):
        return advice(exc) or ""
    return next((text for kind, text in advice.items() if isinstance(exc, kind)), "")


_LIBRARIES = (os.path.dirname(pika.__file__), os.path.dirname(os.path.dirname(__file__)))


def message_in_traceback(exc: BaseException) -> Any:
    """The `body` a learner's callback was handling when `exc` was raised: the innermost frame of the
    learner's own code (not pika's, not the course's) that has a local named `body`."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        body = frame.f_locals.get("body")
        if isinstance(body, (bytes, bytearray, str)) and not frame.f_code.co_filename.startswith(_LIBRARIES):
            found = body
        tb = tb.tb_next
    return found


def call(ctx, name: str, *args, advice=None, on_timeout: Callable[[], str] | None = None,
         timeout: float | None = None, **kwargs) -> Any:
    """Call the learner's function `name` from the namespace, within a time limit.

    Every way it can go wrong becomes an AssertionError with a pt-BR hint: missing or not a
    function, not implemented yet, a hang (`on_timeout()` may say why, from the broker's side), a
    declaration RabbitMQ 4.x refuses, a channel or connection the broker closed, or any other
    exception the learner's code raised ("o seu código levantou X", naming the message a
    callback was handling). Only the check's own assertions are hints: an AssertionError raised
    inside the learner's code (pika raises some of its own) is reported as what it is."""
    fn = ctx.learner(name)
    if not callable(fn):
        raise AssertionError(phrases.not_callable(name, type(fn).__name__))
    seconds = ctx.call_timeout if timeout is None else timeout
    try:
        with time_limit(seconds):
            return fn(*args, **kwargs)
    except _Timeout:
        ctx.timed_out = True  # the learner's code was cut mid-call: see CheckConnection
        hint = (on_timeout() if on_timeout is not None else None) or phrases.too_slow(name, seconds)
        raise AssertionError(hint) from None
    except NotImplementedError:
        raise AssertionError(phrases.not_implemented(name)) from None
    except StrictModeError as exc:
        raise AssertionError(phrases.strict_refused(name, exc)) from None
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
        # basic_publish's answers under confirms: the learner's code let them escape
        raise AssertionError(_raised_hint(name, exc, advice)) from None
    except pika.exceptions.ChannelClosedByBroker as exc:
        extra = _advice_for(advice, exc)
        raise AssertionError(f"{phrases.channel_closed(name, exc.reply_code, exc.reply_text)} {extra}".rstrip()) from None
    except pika.exceptions.AMQPError as exc:
        extra = _advice_for(advice, exc)
        raise AssertionError(f"{phrases.connection_failed(name, exc)} {extra}".rstrip()) from None
    except Exception as exc:  # noqa: BLE001 - the learner's bug, reported as a hint
        raise AssertionError(_raised_hint(name, exc, advice)) from None


def _raised_hint(name: str, exc: BaseException, advice) -> str:
    """"O seu código levantou X", naming the message a callback was handling, plus advice."""
    text = phrases.raised(name, exc)
    body = message_in_traceback(exc)
    if body is not None:
        shown = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
        text += (f" Aconteceu ao tratar a mensagem {shown[:120]!r}: o callback precisa lidar com "
                 f"mensagens assim (try/except) em vez de deixar a exceção escapar.")
    if isinstance(exc, AssertionError):
        text += (" (Esse AssertionError veio de dentro do pika ou do seu código, não da "
                 "verificação: costuma ser um canal usado por duas threads ao mesmo tempo.)")
    return f"{text} {_advice_for(advice, exc)}".rstrip()


class CheckConnection:
    """A connection of the check's own, to hand to the learner's function, with a name of its own so
    that the broker can drop it. The time limit interrupts the learner's code wherever it is, pika's
    writes included; a connection left mid-frame may then never finish a polite close (it waits for
    the reply to a frame it never sent, until the heartbeat gives up minutes later). So after a
    timeout (`ctx.timed_out`, set by `call`) the broker is asked to close it (management API) before
    this side closes."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.tag = f"curso-verificacao-{uuid.uuid4().hex[:12]}"
        ctx.timed_out = False
        self.connection = ctx.curso.connect(client_properties={"connection_name": self.tag})

    def __enter__(self):
        return self.connection

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self.ctx, "timed_out", False) and is_open(self.connection):
            def mine():
                return [c["name"] for c in self.ctx.management.connections()
                        if (c.get("client_properties") or {}).get("connection_name") == self.tag]
            for name in self.ctx.eventually(mine, bool):
                self.ctx.management.close_connection(name)
        close_quietly(self.connection)


@contextlib.contextmanager
def learner_channel(ctx, what: str) -> Iterator[Any]:
    """A fresh connection and channel to hand to the learner's function, closed afterwards (by the
    broker first if the learner's call was cut by the time limit); broker errors that escape the
    block become hints."""
    check = CheckConnection(ctx)
    try:
        yield check.connection.channel()
    except CourseError as exc:  # strict mode (RabbitMQ 4.x) and other course errors
        raise AssertionError(f"{what} falhou: {exc}") from None
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise AssertionError(f"O broker fechou o canal durante {what}: {exc.reply_code} "
                             f"{exc.reply_text}. Confira nomes e tipos nas declarações.") from None
    except pika.exceptions.AMQPError as exc:
        raise AssertionError(f"{what} falhou com {exc.__class__.__name__}: {exc}") from None
    finally:
        check.close()


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Whether a topic exchange routes `routing_key` through `binding_key` (* one word, # zero or more)."""
    def match(pattern: list[str], words: list[str]) -> bool:
        if not pattern:
            return not words
        head, rest = pattern[0], pattern[1:]
        if head == "#":
            return any(match(rest, words[i:]) for i in range(len(words) + 1))
        return bool(words) and head in ("*", words[0]) and match(rest, words[1:])
    return match(binding_key.split("."), routing_key.split("."))


def settled_early(settles, finished: Iterable[float]) -> int:
    """How far the settlements (objects with `.at`, a time.monotonic() of each ack, nack or reject)
    ran ahead of the learner's processing calls that had ended (`finished`, their end times): 0 when
    each settlement came after its own call returned."""
    events = sorted([(t, 0) for t in finished] + [(s.at, 1) for s in settles])
    ended = settled = ahead = 0
    for _, kind in events:
        if kind == 0:
            ended += 1
        else:
            settled += 1
            ahead = max(ahead, settled - ended)
    return ahead


def probe_routing(ctx, messages, queues: list[str]) -> dict[str, list[str]]:
    """Purge `queues`, publish `messages` [(exchange, routing key, headers, body), ...] and return the
    bodies each queue received, in order.

    Publishes with confirms and mandatory=True (an unroutable message is simply not anywhere);
    reads with basic_get and closes the channel without acking, so the messages go back in place.
    A consumer on one of the queues would take the probe's messages: that is a hint."""
    connection = ctx.curso.connect()
    try:
        channel = connection.channel()
        for name in queues:
            ok = channel.queue_declare(queue=name, passive=True).method
            if ok.consumer_count:
                raise AssertionError(
                    f"A fila '{name}' tem {ok.consumer_count} consumidor(es) ligado(s): eles levariam as "
                    f"mensagens da verificação. Cancele-os (channel.cancel()) ou feche a conexão deles.")
            channel.queue_purge(queue=name)
        channel.confirm_delivery()
        for exchange, key, headers, body in messages:
            try:
                channel.basic_publish(exchange=exchange, routing_key=key, body=body,
                                      properties=pika.BasicProperties(headers=headers), mandatory=True)
            except pika.exceptions.UnroutableError:
                pass  # it reached no queue: that is information too
            except pika.exceptions.NackError:
                pass  # a full queue refused it (x-overflow=reject-publish): the bodies will tell
        reader = connection.channel()
        received = {}
        for name in queues:
            bodies = []
            while True:
                method, _properties, body = reader.basic_get(queue=name, auto_ack=False)
                if method is None:
                    break
                bodies.append(body.decode())
            received[name] = bodies
        reader.close()  # unacked messages go back to their queues, in place
        return received
    finally:
        close_quietly(connection)


# --- preparing the broker --------------------------------------------------------------------------

def dead_letter_to(queue: str) -> dict:
    """Queue arguments that dead-letter through the default exchange into `queue`."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}


def fresh_queue(ctx, name: str, bodies: Iterable[str] = (), arguments: dict | None = None,
                properties: pika.BasicProperties | None = PERSISTENT, channel=None) -> None:
    """Delete `name`, declare it durable (with `arguments`) and publish `bodies` to it, in order.

    With `channel`, uses it (and leaves it open); otherwise a connection of its own, closed after."""
    ctx.management.delete_queue(name)
    if channel is None:
        with ctx.curso.connect() as connection:
            fresh_queue(ctx, name, bodies, arguments, properties, connection.channel())
        return
    channel.queue_declare(queue=name, durable=True, arguments=arguments)
    for body in bodies:
        channel.basic_publish(exchange="", routing_key=name, body=body, properties=properties)


class LatePublisher(threading.Thread):
    """Publishes `batches` [(at, [(body, properties), ...]), ...] to `queue` through the default
    exchange, each batch `at` seconds into the learner's call, from a connection of its own created in
    this thread (the learner's connection sees nothing but the messages); with `confirm`, on a channel
    with publisher confirms. `hurry()`, or the end of the `with` block, publishes whatever is still
    due at once, so that the verdict never depends on the timing."""

    def __init__(self, ctx, queue: str, batches, confirm: bool = False):
        super().__init__(name="curso-publicador-atrasado", daemon=True)
        self.ctx, self.queue, self.confirm = ctx, queue, confirm
        self.batches = [(at, list(messages)) for at, messages in batches]
        self.ready, self.go = threading.Event(), threading.Event()
        # "publish the rest now": a plain flag, never an Event. hurry() runs in the main thread inside
        # the learner's call, where the check's time limit (SIGALRM) can raise; an exception raised
        # inside Event.set() can leave its lock held, and the next set() then blocked a suite forever.
        self._now = False
        self.published = 0  # messages published so far, in order

    def _send(self, channel, message) -> None:
        body, properties = message
        channel.basic_publish(exchange="", routing_key=self.queue, body=body, properties=properties)

    def run(self) -> None:
        try:
            with self.ctx.curso.connect() as connection:
                channel = connection.channel()
                if self.confirm:
                    channel.confirm_delivery()
                self.ready.set()
                self.go.wait(timeout=60)
                start = time.monotonic()
                for at, messages in self.batches:
                    while not self._now and time.monotonic() < start + at:  # `_now`: the call is over
                        time.sleep(min(0.02, max(0.0, start + at - time.monotonic())))
                    for message in messages:
                        self._send(channel, message)
                        self.published += 1
        except Exception:  # noqa: BLE001 - then __exit__ publishes the rest itself, afterwards
            pass
        finally:
            self.ready.set()

    def hurry(self) -> None:
        """Publish whatever is still due at once (the verdict no longer depends on the timing)."""
        self._now = True

    def __enter__(self) -> "LatePublisher":
        self.start()
        self.ready.wait(timeout=10)
        self.go.set()
        return self

    def __exit__(self, *exc) -> None:
        self._now = True
        self.join(timeout=10)
        rest = [m for _, messages in self.batches for m in messages][self.published:]
        if rest:
            with self.ctx.curso.connect() as connection:
                channel = connection.channel()
                for message in rest:
                    self._send(channel, message)


def reset_topology(ctx, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
    """Delete the exercise's exchanges and queues (whatever an earlier try left)."""
    for name in queues:
        ctx.management.delete_queue(name)
    for name in exchanges:
        ctx.management.delete_exchange(name)


# --- reading the broker ----------------------------------------------------------------------------

def exact_counts(ctx, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of `queue` from a passive declare: exact, no statistics lag.
    None if the queue does not exist (or is exclusive to another connection)."""
    with ctx.curso.connect() as connection:
        try:
            ok = connection.channel().queue_declare(queue=queue, passive=True).method
        except pika.exceptions.ChannelClosedByBroker:
            return None
        return ok.message_count, ok.consumer_count


def counts_of(ctx, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue the check set up, exact (`exact_counts`); a queue that
    is gone fails the check with `phrases.queue_missing`."""
    counts = exact_counts(ctx, queue)
    if counts is None:
        raise AssertionError(phrases.queue_missing(queue))
    return counts


def drain(connection: pika.BlockingConnection, queue: str, expected: int = 0,
          wait: float = 0.0) -> list[tuple[Any, bytes]]:
    """(properties, body) of every message in `queue`, taken with basic_get and acked: exact, no
    statistics. Waits up to `wait` s for `expected` ready messages first (dead-lettering happens in
    the background; a quorum queue that just lost its leader answers once a new one is elected).
    A queue that does not exist gives []. Closes `connection` (the check's own)."""
    got: list[tuple[Any, bytes]] = []
    with connection:
        channel = connection.channel()
        deadline = time.monotonic() + wait
        while True:
            try:
                ready = channel.queue_declare(queue=queue, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                return got
            if ready >= expected or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        while True:
            method, properties, body = channel.basic_get(queue=queue, auto_ack=False)
            if method is None:
                return got
            got.append((properties, body))
            channel.basic_ack(delivery_tag=method.delivery_tag)


def stats(q: dict | None) -> dict:
    """A queue's (or vhost's) message_stats counters, {} before the first sample."""
    return (q or {}).get("message_stats") or {}


def no_ack_deliveries(q: dict | None) -> int:
    """Messages delivered with auto_ack=True (basic.consume or basic.get), from statistics."""
    s = stats(q)
    return s.get("deliver_no_ack", 0) + s.get("get_no_ack", 0)


def is_persistent(message: dict) -> bool:
    """A message read through the management API was published with delivery_mode=2.
    (A message without properties shows `"properties": []`.)"""
    return (message.get("properties") or {}).get("delivery_mode") == 2


def connection_names(ctx) -> set[str]:
    """Names of the connections the broker lists in the sandbox's vhost (statistics: they lag)."""
    return {c["name"] for c in ctx.management.connections()}


def connections_now(ctx, timeout: float | None = None) -> set[str]:
    """Names of the connections open in the sandbox's vhost, read once the broker's list has caught
    up with everything opened before this call.

    The list is statistics: a new connection shows up to one collection interval late, a closed one
    vanishes at once. So a marker connection of the check's own is opened and the list is read
    until the marker is in it (at most `timeout`, default the statistics wait): every connection
    opened before the marker and still open is then listed too. One interval at most, not the
    whole statistics window, whether or not something was left open."""
    marker = f"curso verificação {uuid.uuid4().hex[:12]}"
    connection = ctx.curso.connect(client_properties={"connection_name": marker})

    def is_marker(record: dict) -> bool:
        return (record.get("client_properties") or {}).get("connection_name") == marker

    try:
        records = ctx.eventually(ctx.management.connections, lambda rs: any(is_marker(r) for r in rs),
                                 timeout=timeout)
    finally:
        close_quietly(connection)
    return {r["name"] for r in records if not is_marker(r)}


def new_connections(ctx, before: set[str], timeout: float | None = None) -> set[str]:
    """Connections opened since `before` (a `connection_names` snapshot) and still open."""
    return connections_now(ctx, timeout) - before


def is_open(connection) -> bool:
    """`connection.is_open`, False for an object whose __init__ failed (pika's is_open raises
    AttributeError then: a refused login leaves such objects behind until garbage collection)."""
    try:
        return bool(connection.is_open)
    except AttributeError:
        return False


def open_connections() -> set[int]:
    """ids of the BlockingConnections open in this process (kernel side only)."""
    return {id(o) for o in gc.get_objects() if isinstance(o, pika.BlockingConnection) and is_open(o)}


def open_in(namespace: dict | None, names=None) -> list[str]:
    """Names in `namespace` (all but underscore names, or only `names`, a function's globals, which
    may start with an underscore) bound to an open pika BlockingConnection, or to a channel of one."""
    namespace = namespace or {}
    found = []
    for name in (list(namespace) if names is None else [n for n in names if n in namespace]):
        if names is None and name.startswith("_"):
            continue  # IPython's output history (_, _5, ...): not the learner's names, unless used
        value = namespace.get(name)
        if isinstance(value, BlockingChannel):
            value = value.connection
        if isinstance(value, pika.BlockingConnection) and is_open(value):
            found.append(name)
    return sorted(found)


def globals_used(fn) -> set[str]:
    """Global names a function's code reads (its own and its nested code objects', such as
    comprehensions), not attribute names: `connection.channel()` does not read a global `channel`."""
    found: set[str] = set()
    todo = [getattr(fn, "__code__", None)]
    while todo:
        code = todo.pop()
        if code is None:
            continue
        found |= {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
        todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def names_list(names: Iterable[str]) -> str:
    """`a` e `b`: names as a learner reads them in a hint."""
    return " e ".join(f"`{n}`" for n in names)


def answer_cell_left_open(ctx) -> str | None:
    """Where the answer cell that ran before this check left a connection open, in pt-BR, or None.

    In the kernel, exact and at once: the learner's names bound to an open connection or channel
    ("em `connection`"); with none named but a pika connection open in the kernel, the broker's
    list decides (an unnamed `pika.BlockingConnection(...).channel()`). On the grader's side
    (`ctx.namespace is None`) only the broker's list tells, read behind a marker
    (`connections_now`: one collection interval at most)."""
    if ctx.namespace is not None:
        held = open_in(ctx.namespace)
        if held:
            return f"em {names_list(held)}"
        if not open_connections():
            return None
    left = connections_now(ctx)
    return f"o broker ainda mostra {len(left)} conexão(ões) aberta(s) no vhost {ctx.curso.vhost}" if left else None


# Connections that a learner's function left open, found by the kernel side of a check. Left to
# themselves they sit in reference cycles, and the garbage collector would close them at some random
# later moment: the check keeps them open instead, until the next check that watches connections
# starts (`release_left_open`), so that the grader's broker-side verify (which runs after the check
# cell) sees what the kernel saw.
_LEFT_OPEN: list = []


def release_left_open() -> None:
    """Close the connections `watch_connections` kept open for the grader's verify."""
    while _LEFT_OPEN:
        close_quietly(_LEFT_OPEN.pop())


class OpenedConnections(list):
    """The connections a block left open (the list), and `created`: every BlockingConnection the
    block created."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list = []


@contextlib.contextmanager
def watch_connections() -> Iterator[OpenedConnections]:
    """Collect the pika connections opened in the block and still open after it (kernel side).

    Exact and cheap: each BlockingConnection created in the block is recorded (pika's class is
    patched for the block only) and held, so that no garbage collection can close a leaked one
    unseen; the ones still open are kept open until `release_left_open`."""
    found = OpenedConnections()
    created = found.created
    cls = pika.BlockingConnection
    original = cls.__init__

    @functools.wraps(original)
    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        created.append(self)

    cls.__init__ = recording
    try:
        yield found
    finally:
        cls.__init__ = original
        found.extend(c for c in created if is_open(c))
        _LEFT_OPEN.extend(found)


def handed_channel_hint(name: str, channel, closes: list, why_closed: str) -> str | None:
    """Why the channel a check handed to the learner's function `name` is no longer open, or None.

    `closes` records the learner's channel.close() calls (`record_calls(channel, "close")`);
    `why_closed` is the chapter's sentence on what makes the broker close a channel."""
    if channel.is_open:
        return None
    stop = ("Para parar de consumir, cancele o consumidor (channel.basic_cancel(tag), ou channel.cancel() "
            "depois de channel.consume(...)) e volte, sem fechar nada.")
    if not is_open(channel.connection):
        return (f"Depois que `{name}` voltou, a conexão do canal que ela recebeu estava fechada: uma função não "
                f"fecha a conexão nem o canal que não abriu — quem os passou ainda vai usá-los. {stop}")
    if closes:
        return (f"`{name}` fechou o canal que recebeu (channel.close()): uma função não fecha um canal que não "
                f"abriu — quem o passou ainda vai usá-lo. {stop}")
    return f"Depois que `{name}` voltou, o canal que ela recebeu estava fechado. {why_closed}"


def record_calls(channel, *methods: str) -> list[tuple[str, dict]]:
    """Record each call of the channel's `methods` as (method, its arguments with the defaults
    filled in); only the instance's methods are wrapped, the calls go through unchanged."""
    calls: list[tuple[str, dict]] = []
    for method in methods:
        original = getattr(channel, method)
        signature = inspect.signature(original)

        def recording(*args, _method=method, _original=original, _signature=signature, **kwargs):
            try:
                bound = _signature.bind(*args, **kwargs)
                bound.apply_defaults()
                calls.append((_method, dict(bound.arguments)))
            except TypeError:
                calls.append((_method, {}))  # a wrong call: pika itself will say so
            return _original(*args, **kwargs)

        setattr(channel, method, recording)
    return calls


def bindings_from(ctx, exchange: str) -> list[dict]:
    """The bindings whose source is `exchange` (definitions: current at once)."""
    return [b for b in ctx.management.bindings() if b["source"] == exchange]


def expect_durable_queue(ctx, name: str, where: str) -> dict:
    """The queue's record; fails with a hint unless it exists as a plain durable queue."""
    q = ctx.queue(name)
    if q is None:
        raise AssertionError(f"A fila '{name}' não existe no broker. Declare-a em {where} com "
                             f"channel.queue_declare(queue='{name}', durable=True).")
    if not (q.get("durable") and not q.get("exclusive") and not q.get("auto_delete")):
        raise AssertionError(
            f"A fila '{name}' existe, mas não é uma fila durável comum (durable={q.get('durable')}, "
            f"exclusive={q.get('exclusive')}, auto_delete={q.get('auto_delete')}). Declare-a só com "
            f"durable=True.")
    return q


# --- observing the learner's use of a channel (kernel side) --------------------------------------------

class ChannelLog:
    """What the learner's code did with one channel (kernel side), call by call."""

    def __init__(self) -> None:
        self.confirming = False   # confirm_delivery() has returned on this channel
        self.publishes: list[dict] = []  # basic_publish arguments, plus "confirming" at the time
        self.gets: list[dict] = []       # basic_get arguments, plus "method" (None: queue was empty)
        self.acks: list[dict] = []       # basic_ack arguments
        self.rejects: list[dict] = []    # basic_nack / basic_reject arguments

    def mark(self) -> tuple[int, int, int]:
        """Where the logs stand now: pass it to `since` to see only what came after."""
        return len(self.publishes), len(self.gets), len(self.acks)

    def since(self, mark: tuple[int, int, int]) -> tuple[list[dict], list[dict], list[dict]]:
        return self.publishes[mark[0]:], self.gets[mark[1]:], self.acks[mark[2]:]


def observe_channel(channel) -> ChannelLog:
    """Record what is done through `channel`'s public methods (confirm_delivery, basic_publish,
    basic_get, basic_ack, basic_nack, basic_reject) by shadowing them on the instance; the calls
    themselves go through to pika unchanged."""
    log = ChannelLog()

    def wrap(name: str, on_call: Callable[[dict], dict | None], on_result=None) -> None:
        original = getattr(channel, name)
        signature = inspect.signature(original)

        @functools.wraps(original)
        def observed(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:  # a wrong call: let pika say so
                return original(*args, **kwargs)
            bound.apply_defaults()
            entry = on_call(dict(bound.arguments))
            result = original(*args, **kwargs)
            if on_result is not None:
                on_result(entry, result)
            return result

        setattr(channel, name, observed)

    def confirmed(entry, result):
        log.confirming = True

    def publish(arguments):
        arguments["confirming"] = log.confirming
        log.publishes.append(arguments)
        return arguments

    def get(arguments):
        log.gets.append(arguments)
        return arguments

    def got(entry, result):
        entry["method"] = result[0] if isinstance(result, tuple) and result else None

    wrap("confirm_delivery", lambda arguments: None, confirmed)
    wrap("basic_publish", publish)
    wrap("basic_get", get, got)
    wrap("basic_ack", lambda arguments: log.acks.append(arguments))
    wrap("basic_nack", lambda arguments: log.rejects.append(arguments))
    wrap("basic_reject", lambda arguments: log.rejects.append(arguments))
    return log


def persistent_properties(properties) -> bool:
    """BasicProperties (as handed to basic_publish) that make the message persistent."""
    mode = getattr(properties, "delivery_mode", None)
    return mode == 2 or mode == pika.DeliveryMode.Persistent


def settled(ctx, probe: Callable[[], Any], done: Callable[[Any], bool],
             collected: Callable[[Any], bool]) -> Any:
    """Poll a statistics `probe()` within the stats wait until `done(value)` (the verdict a right
    answer earns, final since its counters only grow), or until `collected(value)` holds with a
    value that has not changed for a whole statistics interval (`ctx.stats_interval`, and a poll):
    the collection pass that `collected` proves has happened is then complete, and a wrong answer
    can be judged from it without waiting any longer. Two polls a moment apart are not enough: one
    pass can show a publish and not yet its confirm (they are counted apart), and the next pass
    brings the confirm (seen once in CI: 4.1's solution judged on 2 confirms of 3)."""
    seen: list[Any] = [object(), 0.0]  # the last value and when it first showed

    def condition(value):
        now = time.monotonic()
        if value != seen[0]:
            seen[0], seen[1] = value, now
        return done(value) or (collected(value) and now - seen[1] >= ctx.stats_interval + 0.2)

    return ctx.eventually(probe, condition)


def peek_one(ctx, queue: str) -> dict:
    """The first message of `queue` as the management API shows it (put back), or {} (also when
    the queue does not exist)."""
    try:
        messages = ctx.management.peek(queue, 1)
    except ManagementError as exc:
        if exc.status != 404:
            raise
        messages = []
    return messages[0] if messages else {}


def body_text(body: Any) -> str:
    """A message body as text: bytes decoded as UTF-8 (what does not decode is replaced), else str()."""
    return body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)


def shown(bodies: Iterable[Any]) -> str:
    """Bodies for a pt-BR sentence: 'pedido 1', 'pedido 2' (each as text, quoted)."""
    return ", ".join(repr(body_text(b)) for b in bodies)


def advice_in(table: Mapping[str, str], exc: BaseException) -> str | None:
    """The sentence of `table` whose key (e.g. 'PRECONDITION_FAILED - unknown delivery tag') is in
    the AMQP error's reply text or message; None if none is. For a chapter's `advice=` callable."""
    text = f"{getattr(exc, 'reply_text', '')} {exc}"
    return next((sentence for needle, sentence in table.items() if needle in text), None)


def payload_text(message: dict) -> str:
    """The body of a peeked message as text (the API sends non-UTF-8 bodies as base64)."""
    payload = message.get("payload", "")
    if message.get("payload_encoding") == "base64":
        payload = base64.b64decode(payload).decode("utf-8", "replace")
    return payload


# --- the shop's services (chapters 10 and 13) ------------------------------------------------------
# The learner writes one service of the shop (course_utils.loja); the check plays the services
# around it: it declares the bus and queues, publishes the input events with the properties
# convention, reads the output events back from a queue of its own, and looks at the service's
# SQLite file. A service that must really crash is a script the check runs as a process, with the
# fault hook FAULT_HOOK written next to it.

SHOP_DLX = "loja.dlx"  # the shop's dead-letter exchange: direct, keyed by the queue's name, into <queue>.dlq


def shop_dead_letter(queue: str) -> dict:
    """The shop's dead-letter arguments of `queue`: rejected messages go, through `loja.dlx`, to `<queue>.dlq`."""
    return {"x-dead-letter-exchange": SHOP_DLX, "x-dead-letter-routing-key": queue}


def expect(condition: Any, hint: str) -> None:
    """Fail the check with a hint the learner can act on (`checks.expect` is this one)."""
    if not condition:
        raise AssertionError(hint)


def shop_bus(ctx, queues: dict[str, tuple[list[str], dict | None]]) -> None:
    """Declare the bus (topic, durable), `loja.dlx`, and fresh durable queues {name: ([binding keys],
    arguments)}; a queue with the shop's dead-letter arguments gets its fresh `<name>.dlq` too."""
    from ..loja import contratos

    with ctx.curso.connect() as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange=contratos.EXCHANGE, exchange_type="topic", durable=True)
        channel.exchange_declare(exchange=SHOP_DLX, exchange_type="direct", durable=True)
        for name, (keys, arguments) in queues.items():
            ctx.management.delete_queue(name)
            if arguments and arguments.get("x-dead-letter-exchange") == SHOP_DLX:
                ctx.management.delete_queue(f"{name}.dlq")
                channel.queue_declare(queue=f"{name}.dlq", durable=True)
                channel.queue_bind(queue=f"{name}.dlq", exchange=SHOP_DLX, routing_key=name)
            channel.queue_declare(queue=name, durable=True, arguments=arguments)
            for key in keys:
                channel.queue_bind(queue=name, exchange=contratos.EXCHANGE, routing_key=key)


def event_properties(pedido_id: str, chave: str, message_id: str | None = None) -> pika.BasicProperties:
    """The shop's properties convention for the event `chave` of order `pedido_id`."""
    from ..loja import contratos

    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
                                type=contratos.CHAVES[chave], message_id=message_id or str(uuid.uuid4()),
                                correlation_id=pedido_id)


def publish_events(ctx, events: list[tuple[str, object, pika.BasicProperties]]) -> None:
    """Publish [(routing key, body (dict or raw bytes), properties), ...] to the bus, confirmed."""
    import json

    from ..loja import contratos

    with ctx.curso.connect() as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for key, body, properties in events:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            channel.basic_publish(exchange=contratos.EXCHANGE, routing_key=key, body=raw, properties=properties)


def message_props(message: dict) -> dict:
    """The properties of a peeked message ({} when it has none)."""
    return message.get("properties") or {}


def expect_convention(message: dict, what: str, chave: str) -> dict:
    """The properties convention of the shop's events, for one peeked message; its decoded body
    (checked against the contract of `chave`). `what` names the message in the hints."""
    import json

    from ..loja import contratos

    props = message_props(message)
    expect(is_persistent(message),
           f"{what} não é persistente: publique com delivery_mode=pika.DeliveryMode.Persistent.")
    expect(props.get("content_type") == "application/json",
           f"{what} veio com content_type {props.get('content_type')!r}: o contrato pede "
           f"content_type=\"application/json\".")
    expect(props.get("type") == contratos.CHAVES[chave],
           f"{what} (chave {chave}) veio com type {props.get('type')!r}: o type é o nome do evento, "
           f"{contratos.CHAVES[chave]!r} (contratos.CHAVES[{chave!r}]).")
    expect(props.get("message_id"), f"{what} veio sem message_id: cada mensagem leva um id novo (str(uuid.uuid4())).")
    try:
        body = json.loads(payload_text(message))
    except ValueError:
        raise AssertionError(f"{what} não tem um corpo JSON: publique json.dumps(evento).") from None
    problems = contratos.erros(chave, body)
    expect(not problems, f"{what} não segue o esquema de {chave}: {'; '.join(problems[:3])} (veio {body!r}).")
    return body


# SQLite: the service's database is a scratch file; the learner's connections are recorded.
_sqlite_connect = sqlite3.connect  # the real one: the check's own reads never go through recorded_sqlite
_SCRATCH: list = []


def scratch_db(name: str, script: str) -> str:
    """A new SQLite file, created by running `script`, in this process's scratch folder for the
    checks (one folder, `$TMPDIR/curso-verificacao-<pid>-xxxx`, removed at exit; a kernel that is
    killed cannot remove it, so the folders of processes that no longer exist are removed here); its path."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    if not _SCRATCH:
        for stale in Path(tempfile.gettempdir()).glob("curso-verificacao-*-*"):
            pid = stale.name.split("-")[2]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix=f"curso-verificacao-{os.getpid()}-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    path = _SCRATCH[0] / f"{uuid.uuid4().hex[:8]}-{name}"
    with contextlib.closing(_sqlite_connect(path)) as db:
        db.executescript(script)
        db.commit()
    return str(path)


def query(path, sql: str, *args) -> list[tuple]:
    """The rows of `sql` on the SQLite file `path` (committed state; a connection of the check's own)."""
    with contextlib.closing(_sqlite_connect(path, timeout=5)) as db:
        return db.execute(sql, args).fetchall()


_DBS: list = []  # the SQLite connections the learner's code opened while recorded_sqlite runs


class TracedDB(sqlite3.Connection):
    """A SQLite connection that records its transactions: `transactions` is a list of the
    statements each COMMIT made durable (upper case, one space between words); `wrote` is True once
    the open transaction changed rows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.transactions: list[list[str]] = []
        self.current: list[str] = []
        self.wrote = False
        self.set_trace_callback(self._trace)

    def _trace(self, statement: str) -> None:
        head = statement.strip().split(None, 1)[0].upper() if statement.strip() else ""
        if head in ("COMMIT", "END"):
            self.transactions.append(self.current)
            self.current, self.wrote = [], False
        elif head == "ROLLBACK":
            self.current, self.wrote = [], False
        elif head in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            self.current.append(" ".join(statement.split()).upper())
            self.wrote = True


def uncommitted() -> bool:
    """True if a recorded SQLite connection holds a transaction with changes not yet committed."""
    for db in _DBS:
        try:
            if db.in_transaction and db.wrote:
                return True
        except sqlite3.ProgrammingError:  # closed
            pass
    return False


@contextlib.contextmanager
def recorded_sqlite() -> Iterator[list]:
    """While the block runs, sqlite3.connect() returns TracedDB connections; yields the list of them."""
    original = sqlite3.connect

    @functools.wraps(original)
    def connect(*args, **kwargs):
        kwargs.setdefault("factory", TracedDB)
        db = original(*args, **kwargs)
        if isinstance(db, TracedDB):
            _DBS.append(db)
            opened.append(db)
        return db

    _DBS.clear()
    opened: list = []
    sqlite3.connect = connect
    try:
        yield opened
    finally:
        sqlite3.connect = original
        _DBS.clear()


class RequeueLoop(BaseException):
    """Raised in the learner's code once it requeued more messages than the check allows (a
    BaseException, so that no `except Exception` of the learner's swallows it)."""


class CallLog(list):
    """The log of `channel_calls`; with `max_requeues`, the requeue after that many raises RequeueLoop."""
    max_requeues: int | None = None


@contextlib.contextmanager
def channel_calls() -> Iterator[CallLog]:
    """Record, in order, what every BlockingChannel of this process does while the block runs:
    ("confirm", channel), ("publish", channel, exchange, routing_key, properties, body, uncommitted)
    (logged once the broker confirmed it; `uncommitted`: a recorded SQLite connection held changes
    not yet committed when the publish began), ("ack"|"nack"|"reject", channel, delivery_tag,
    requeue, multiple), and (name, channel, exchange or queue, the call's keyword arguments) for
    exchange_declare, queue_declare and queue_bind. A channel is in confirm mode once confirm_delivery() ran on it."""
    names = ("basic_publish", "confirm_delivery", "basic_ack", "basic_nack", "basic_reject",
             "exchange_declare", "queue_declare", "queue_bind")
    originals = {n: getattr(BlockingChannel, n) for n in names}
    log = CallLog()

    def wrap(name):
        original = originals[name]

        @functools.wraps(original)
        def recorded(self, *args, **kwargs):
            if name in ("exchange_declare", "queue_declare", "queue_bind"):
                first = ("exchange" if name == "exchange_declare" else "queue")
                bound = dict(zip((first,), args))
                bound.update(kwargs)
                result = original(self, *args, **kwargs)
                log.append((name, self, bound.get(first), bound))
                return result
            if name == "basic_publish":
                bound = dict(zip(("exchange", "routing_key", "body", "properties", "mandatory"), args))
                bound.update(kwargs)
                pending = uncommitted()
                result = original(self, *args, **kwargs)  # logged once the broker confirmed it
                log.append(("publish", self, bound.get("exchange"), bound.get("routing_key"),
                            bound.get("properties"), bound.get("body"), pending))
                return result
            if name == "confirm_delivery":
                result = original(self, *args, **kwargs)
                log.append(("confirm", self))
                return result
            bound = dict(zip(("delivery_tag", "multiple" if name != "basic_reject" else "requeue",
                              "requeue"), args))
            bound.update(kwargs)
            requeue = bound.get("requeue", True)
            log.append((name[6:], self, bound.get("delivery_tag"), requeue,
                        name != "basic_reject" and bool(bound.get("multiple", False))))
            result = original(self, *args, **kwargs)
            if requeue and log.max_requeues is not None and \
                    sum(1 for e in log if e[0] in ("nack", "reject") and e[3]) > log.max_requeues:
                raise RequeueLoop()
            return result
        return recorded

    for n in names:
        setattr(BlockingChannel, n, wrap(n))
    try:
        yield log
    finally:
        for n, original in originals.items():
            setattr(BlockingChannel, n, original)


def close_all(connections) -> None:
    """Close every connection (quietly)."""
    for connection in connections:
        close_quietly(connection)


def left_open_hint(name: str, left) -> str:
    """The pt-BR hint for a service function `name` that returned leaving connections `left` open."""
    return (f"A sua função `{name}` voltou e deixou {len(left)} conexão(ões) com o RabbitMQ aberta(s): "
            f"feche a conexão antes de voltar (`connection.close()`, ou `with pika.BlockingConnection(...) "
            f"as connection:`) — um serviço que reinicia deixando conexões para trás esgota o broker.")


# A service run as a real process (so that the check can SIGKILL it): the learner's script imports
# `from falhas import falha`, the check writes this file as `falhas.py` beside it (`bg.write`) and
# reads the lines it prints. `falha()` prints "@curso falha N" and, at the call CURSO_FALHA_EM, sleeps
# so that the check kills the process right there. Every publish prints "@curso publish <message_id>
# confirms=<bool> <routing_key> <correlation_id>" once the broker took it; acks, nacks and rejects
# print "@curso ack|nack|reject <delivery_tag> requeue=<bool>"; consumers "@curso consume auto_ack=<bool>".
FAULT_HOOK = '''"""The check's fault hook, written next to your script by verificar()."""
import inspect
import os
import time

from pika.adapters.blocking_connection import BlockingChannel

_AT = int(os.environ.get("CURSO_FALHA_EM", "0"))
_calls = 0
_confirming = set()
_original = {name: getattr(BlockingChannel, name) for name in (
    "basic_publish", "confirm_delivery", "basic_ack", "basic_nack", "basic_reject", "basic_consume", "consume")}


def _arguments(name, self, args, kwargs):
    try:
        bound = inspect.signature(_original[name]).bind(self, *args, **kwargs)
    except TypeError:
        return {}
    bound.apply_defaults()
    return bound.arguments


def _confirm_delivery(self, *args, **kwargs):
    result = _original["confirm_delivery"](self, *args, **kwargs)
    _confirming.add(id(self))
    return result


def _basic_publish(self, *args, **kwargs):
    result = _original["basic_publish"](self, *args, **kwargs)
    a = _arguments("basic_publish", self, args, kwargs)
    properties = a.get("properties")
    print(f"@curso publish {getattr(properties, 'message_id', None)} confirms={id(self) in _confirming} "
          f"{a.get('routing_key')} {getattr(properties, 'correlation_id', None)}", flush=True)
    return result


def _settle(name):
    def settle(self, *args, **kwargs):
        a = _arguments(name, self, args, kwargs)
        print(f"@curso {name[6:]} {a.get('delivery_tag')} requeue={a.get('requeue', False)}", flush=True)
        return _original[name](self, *args, **kwargs)
    return settle


def _consumer(name):
    def consume(self, *args, **kwargs):
        print(f"@curso consume auto_ack={_arguments(name, self, args, kwargs).get('auto_ack')}", flush=True)
        return _original[name](self, *args, **kwargs)
    return consume


BlockingChannel.basic_publish, BlockingChannel.confirm_delivery = _basic_publish, _confirm_delivery
for _name in ("basic_ack", "basic_nack", "basic_reject"):
    setattr(BlockingChannel, _name, _settle(_name))
for _name in ("basic_consume", "consume"):
    setattr(BlockingChannel, _name, _consumer(_name))


def falha():
    global _calls
    _calls += 1
    print(f"@curso falha {_calls}", flush=True)
    if _calls == _AT:
        time.sleep(30)  # the check kills the process here (SIGKILL)
'''


def hook_lines(worker) -> list[list[str]]:
    """The FAULT_HOOK lines a process printed, split into words ("@curso", what, ...)."""
    return [line.split() for line in worker.lines() if line.startswith("@curso ")]


def ended(worker, grace: float = 2.0) -> bool:
    """True once a process whose output ended has exited too (its stdout closes a moment before the
    process can be reaped); False if it is still running after `grace` seconds."""
    deadline = time.monotonic() + grace
    while worker.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    return not worker.alive


def raised_in(worker) -> str:
    """The exception a dead script's traceback ends with, as a hint ("" if none)."""
    import re

    lines = [line for line in worker.lines() if line.strip() and not line.startswith("@curso")]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Closed\w*)\b", line.strip()):
            return f" O seu script levantou {line.strip()[:300]}."
    return (" Últimas linhas do script: " + " | ".join(lines[-3:])) if lines else ""
