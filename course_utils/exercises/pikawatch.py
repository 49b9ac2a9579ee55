"""Watching how a learner's code uses pika during a call (kernel side), for checks of consumers.

`PikaWatch` patches `BlockingConnection.__init__` and a few `BlockingChannel` methods on the classes
(public API only) for the duration of a `with` block and restores them on exit. It records which
thread created each connection, the consumers and their auto_ack, every delivery and every
ack/nack/reject with the message it settled, and what was published; and it performs an
ack/nack/reject made from the wrong thread safely (through `add_callback_threadsafe`), so that a
thread-unsafe answer fails with a hint about threads every time instead of corrupting pika's
internals. `call_watched` is `kit.call` inside a watch. Used by chapter 5 (and every chapter whose
exercises consume: worker pools, retries, idempotent consumers).
"""
from __future__ import annotations

import functools
import inspect
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from . import kit, phrases


@dataclass
class Settle:
    kind: str             # basic_ack | basic_nack | basic_reject
    requeue: bool
    thread: threading.Thread
    at: float             # time.monotonic() when the learner's code made the call
    bodies: list = field(default_factory=list)  # the messages it settles (deliveries the watch saw)
    known: bool = True    # the delivery tag was delivered on that channel


class PikaWatch:
    """Watches, for the duration of a learner's call, how the learner's code uses pika.

    Patches BlockingConnection.__init__ and a few BlockingChannel methods on the classes (public API
    only) inside `with`, and restores them on exit. Only connections created inside the block, or
    `adopt`ed, are watched; any other connection in the process is left alone. Records:
    - `consumers`: (how, auto_ack) of every basic_consume / consume / basic_get, and
      `started_consuming`, whether start_consuming() ran;
    - `deliveries`: the messages delivered to those consumers, per channel and delivery tag (the
      keys of redeliveries in `redelivered`, the last delivery of each body in `latest`);
    - `settles`: every basic_ack / basic_nack / basic_reject, with the messages it settled;
    - `publishes`: the bodies the learner's code published on a watched channel;
    - `violations`: (method, calling thread, connection's thread) for every call made from a thread
      other than the one that created the connection. An ack/nack/reject from the wrong thread is
      then performed through connection.add_callback_threadsafe, so that pika's internals are not
      corrupted and the check can report the real cause.
    `on_event(what, detail)`, when set, hears each consumer registered ("consume", (how, auto_ack)),
    start_consuming ("start_consuming", None) and settlement ("settle", Settle) as it happens.
    """

    SETTLES = ("basic_ack", "basic_nack", "basic_reject")

    def __init__(self) -> None:
        self.owners: dict[int, tuple[Any, threading.Thread]] = {}
        self.consumers: list[tuple[str, bool]] = []
        self.started_consuming = False  # start_consuming() was called on a watched channel
        self.deliveries: dict[tuple[int, int], bytes] = {}
        self.redelivered: set[tuple[int, int]] = set()
        self.latest: dict[bytes, tuple[int, int]] = {}
        self.publishes: list[bytes] = []
        self.settled: set[tuple[int, int]] = set()
        self.settles: list[Settle] = []
        self.violations: list[tuple[str, threading.Thread, threading.Thread]] = []
        self.on_event: Any = None
        self._channels: dict[int, Any] = {}
        self._saved: dict[tuple[type, str], Any] = {}

    def _event(self, what: str, detail: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(what, detail)
            except Exception:  # noqa: BLE001 - a listener of the check's never breaks the learner's call
                pass

    def adopt(self, connection) -> None:
        """Watch a connection the check created (in the current thread)."""
        self.owners[id(connection)] = (connection, threading.current_thread())

    # bookkeeping ----------------------------------------------------------------------------------
    def _owner(self, channel) -> threading.Thread | None:
        try:
            entry = self.owners.get(id(channel.connection))
        except Exception:  # noqa: BLE001 - a channel in a broken state
            return None
        return entry[1] if entry else None

    def _check_thread(self, what: str, channel) -> bool:
        """Record a call from a thread that does not own the connection; True if it was one."""
        owner, here = self._owner(channel), threading.current_thread()
        if owner is not None and owner is not here:
            self.violations.append((what, here, owner))
            return True
        return False

    def _delivered(self, channel, method, body) -> None:
        self._channels[id(channel)] = channel  # keeps the id unique while we hold it
        key = (id(channel), method.delivery_tag)
        self.deliveries[key] = body
        if getattr(method, "redelivered", False):
            self.redelivered.add(key)
        self.latest[body] = key

    def _settling(self, channel, tag: int, multiple: bool) -> tuple[list, bool]:
        key = id(channel)
        if multiple:
            keys = [k for k in list(self.deliveries) if k[0] == key and (tag == 0 or k[1] <= tag)
                    and k not in self.settled]
        else:
            keys = [(key, tag)] if (key, tag) in self.deliveries else []
        self.settled.update(keys)
        return [self.deliveries[k] for k in keys], bool(keys) or multiple

    # patching ---------------------------------------------------------------------------------------
    def __enter__(self) -> "PikaWatch":
        watch = self
        for cls, name in [(BlockingConnection, "__init__"), (BlockingConnection, "process_data_events"),
                          (BlockingChannel, "basic_consume"), (BlockingChannel, "consume"),
                          (BlockingChannel, "basic_get"), (BlockingChannel, "start_consuming"),
                          (BlockingChannel, "basic_publish"),
                          *[(BlockingChannel, n) for n in self.SETTLES]]:
            self._saved[(cls, name)] = cls.__dict__[name]

        init = self._saved[(BlockingConnection, "__init__")]

        @functools.wraps(init)
        def __init__(connection, *args, **kwargs):
            init(connection, *args, **kwargs)
            watch.owners[id(connection)] = (connection, threading.current_thread())

        events = self._saved[(BlockingConnection, "process_data_events")]

        @functools.wraps(events)
        def process_data_events(connection, *args, **kwargs):
            entry = watch.owners.get(id(connection))
            if entry is not None and entry[1] is not threading.current_thread():
                watch.violations.append(("process_data_events", threading.current_thread(), entry[1]))
            return events(connection, *args, **kwargs)

        def settle_wrapper(name):
            original = self._saved[(BlockingChannel, name)]
            signature = inspect.signature(original)

            @functools.wraps(original)
            def settle(channel, *args, **kwargs):
                if watch._owner(channel) is None:
                    return original(channel, *args, **kwargs)
                try:
                    bound = signature.bind(channel, *args, **kwargs)
                except TypeError:
                    return original(channel, *args, **kwargs)  # the learner's TypeError, as pika gives it
                bound.apply_defaults()
                a = bound.arguments
                bodies, known = watch._settling(channel, a["delivery_tag"], a.get("multiple", False))
                record = Settle(name, bool(a.get("requeue", False)), threading.current_thread(),
                                 time.monotonic(), bodies, known)
                watch.settles.append(record)
                watch._event("settle", record)
                if watch._check_thread(name, channel):
                    channel.connection.add_callback_threadsafe(
                        functools.partial(original, channel, *args, **kwargs))
                    return None
                return original(channel, *args, **kwargs)
            return settle

        basic_consume = self._saved[(BlockingChannel, "basic_consume")]
        consume_signature = inspect.signature(basic_consume)

        @functools.wraps(basic_consume)
        def basic_consume_watched(channel, *args, **kwargs):
            if watch._owner(channel) is None:
                return basic_consume(channel, *args, **kwargs)
            try:
                bound = consume_signature.bind(channel, *args, **kwargs)
            except TypeError:
                return basic_consume(channel, *args, **kwargs)
            bound.apply_defaults()
            callback = bound.arguments["on_message_callback"]
            watch.consumers.append(("basic_consume", bool(bound.arguments["auto_ack"])))
            watch._event("consume", watch.consumers[-1])
            watch._check_thread("basic_consume", channel)
            if callable(callback):
                def on_message(ch, method, properties, body):
                    watch._delivered(ch, method, body)
                    return callback(ch, method, properties, body)
                bound.arguments["on_message_callback"] = on_message
            return basic_consume(*bound.args, **bound.kwargs)

        consume = self._saved[(BlockingChannel, "consume")]
        generator_signature = inspect.signature(consume)

        @functools.wraps(consume)
        def consume_watched(channel, *args, **kwargs):
            if watch._owner(channel) is None:
                return consume(channel, *args, **kwargs)
            try:
                bound = generator_signature.bind(channel, *args, **kwargs)
                bound.apply_defaults()
                watch.consumers.append(("consume", bool(bound.arguments["auto_ack"])))
                watch._event("consume", watch.consumers[-1])
            except TypeError:
                pass
            return watch._relay(channel, consume(channel, *args, **kwargs))

        basic_get = self._saved[(BlockingChannel, "basic_get")]
        get_signature = inspect.signature(basic_get)

        @functools.wraps(basic_get)
        def basic_get_watched(channel, *args, **kwargs):
            if watch._owner(channel) is None:
                return basic_get(channel, *args, **kwargs)
            try:
                bound = get_signature.bind(channel, *args, **kwargs)
                bound.apply_defaults()
                watch.consumers.append(("basic_get", bool(bound.arguments["auto_ack"])))
                watch._event("consume", watch.consumers[-1])
            except TypeError:
                pass
            watch._check_thread("basic_get", channel)
            method, properties, body = basic_get(channel, *args, **kwargs)
            if method is not None:
                watch._delivered(channel, method, body)
            return method, properties, body

        start = self._saved[(BlockingChannel, "start_consuming")]

        @functools.wraps(start)
        def start_consuming(channel, *args, **kwargs):
            if watch._owner(channel) is not None:
                watch.started_consuming = True
                watch._event("start_consuming", None)
                watch._check_thread("start_consuming", channel)
            return start(channel, *args, **kwargs)

        publish = self._saved[(BlockingChannel, "basic_publish")]
        publish_signature = inspect.signature(publish)

        @functools.wraps(publish)
        def basic_publish(channel, *args, **kwargs):
            if watch._owner(channel) is not None:
                try:
                    body = publish_signature.bind(channel, *args, **kwargs).arguments.get("body")
                except TypeError:
                    body = None
                watch.publishes.append(body.encode() if isinstance(body, str) else body)
            return publish(channel, *args, **kwargs)

        BlockingConnection.__init__ = __init__
        BlockingChannel.basic_publish = basic_publish
        BlockingConnection.process_data_events = process_data_events
        BlockingChannel.basic_consume = basic_consume_watched
        BlockingChannel.consume = consume_watched
        BlockingChannel.basic_get = basic_get_watched
        BlockingChannel.start_consuming = start_consuming
        for name in self.SETTLES:
            setattr(BlockingChannel, name, settle_wrapper(name))
        return self

    def __exit__(self, *exc) -> None:
        for (cls, name), original in self._saved.items():
            setattr(cls, name, original)

    def _relay(self, channel, generator):
        """channel.consume(...)'s generator, recording what it delivers and who iterates it."""
        seen: set = set()
        try:
            while True:
                here = threading.current_thread()
                if here not in seen:
                    seen.add(here)
                    self._check_thread("consume", channel)
                try:
                    item = next(generator)
                except StopIteration:
                    return
                method, _properties, body = item
                if method is not None:
                    self._delivered(channel, method, body)
                yield item
        finally:
            generator.close()

    # what the learner did ---------------------------------------------------------------------------
    def auto_ack(self) -> bool:
        return any(auto for _, auto in self.consumers)

    def requeued(self) -> list[Settle]:
        return [s for s in self.settles if s.kind != "basic_ack" and s.requeue]

    def outcomes(self) -> dict[bytes, list[str]]:
        """What happened to each delivered message, in order: 'ack', 'reject', 'requeue'."""
        result: dict[bytes, list[str]] = {}
        for s in self.settles:
            what = "ack" if s.kind == "basic_ack" else ("requeue" if s.requeue else "reject")
            for body in s.bodies:
                result.setdefault(body, []).append(what)
        return result

    def thread_hint(self, name: str) -> str | None:
        """The pt-BR hint for the first thread violation, or None."""
        if not self.violations:
            return None
        what, here, owner = self.violations[0]
        where = f"a thread '{here.name}' usou uma conexão criada pela thread '{owner.name}'"
        if what in self.SETTLES:
            count = sum(1 for v in self.violations if v[0] in self.SETTLES)
            return (f"`{name}` chamou {what} de uma thread que não é a da conexão ({where}; {count} "
                    f"chamada(s) assim). {phrases.THREADS_ACK}")
        ebook = f"{phrases.THREADS_EBOOK} " if what == "basic_consume" else ""
        return f"`{name}` chamou {what} de uma thread que não criou a conexão ({where}). {ebook}{phrases.THREADS_CONSUME}"


def call_watched(ctx, watch: PikaWatch, name: str, *args, advice=None, **kwargs):
    """`kit.call` inside the watch; a thread violation, when there is one, is the real cause of
    whatever else went wrong (pika fails at random when a connection is shared between threads)."""
    try:
        with watch:
            return kit.call(ctx, name, *args, advice=advice, **kwargs)
    except AssertionError as exc:
        hint = watch.thread_hint(name)
        if hint is None:
            raise
        raise AssertionError(f"{hint} (A chamada terminou assim: {exc})") from None
