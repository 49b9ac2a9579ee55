"""Throughput lab: how fast can Python publish and consume, and what do confirms, persistence and
prefetch cost?

    from course_utils.throughput import measure_publish, measure_consume, compare, plot_throughput
    measure_publish(curso, count=20_000, confirm="batch", batch_size=100)
    df = compare(curso, {"confirm": ["none", "message", "batch"], "persistent": [False, True]})
    plot_throughput(df)

Every measurement declares its own durable queue (`curso.lab.<id>`, with `x-expires` as a safety
net) and deletes it when done, even on errors. Figures are from the client's side: msg/s is
messages divided by the seconds from the first publish (or delivery) to the last one (or to the
last confirm). Latency percentiles (p50/p95/p99, in ms):
- publish with confirms: time from basic_publish until the broker confirmed that message;
- publish without confirms: not measured (NaN): nothing comes back from the broker;
- consume: time a consumer waits between two deliveries (with prefetch 1 that is a full ack
  round trip; with a larger prefetch the next messages are already on their way).

Publisher confirms, as in RabbitMQ's "Publisher Confirms" tutorial (7):
- confirm="none": plain BlockingChannel.basic_publish; the broker says nothing back;
- confirm="message": after channel.confirm_delivery(), pika's BlockingChannel.basic_publish blocks
  until the broker acks that message (BlockingChannel has no wait_for_confirms: each publish is
  its own round trip) - the tutorial's "publishing messages individually";
- confirm="batch": publish `batch_size` messages, wait until the broker confirmed all of them,
  then publish the next batch - the tutorial's "publishing messages in batches". BlockingChannel
  cannot publish without waiting once confirms are on, so this uses pika's asynchronous adapter
  (SelectConnection): basic_publish only buffers, and a confirm callback counts the acks (the
  broker may ack several at once with multiple=True);
- confirm="async": the tutorial's "handling publisher confirms asynchronously": keep publishing
  while at most `batch_size` messages wait for their confirm (SelectConnection too).
"""
from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pika
import pika.exceptions
import pika.spec
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter
from tqdm.auto import tqdm

from ._toolkit import in_notebook, new_figure
from .numbers import MISSING, BrTable, format_number, formatted, is_missing, number_formatter
from .errors import CourseError

CONFIRM_MODES = ("none", "message", "batch", "async")
LAB_PREFIX = "curso.lab."
EXPIRES_MS = 10 * 60 * 1000  # a queue left behind by a killed kernel disappears after 10 min


@dataclass
class Measurement:
    """One run of the lab. `row()` is its line in compare()'s DataFrame."""

    operation: str                # "publish" or "consume"
    messages: int
    seconds: float
    size: int
    persistent: bool
    confirm: str | None = None    # publish only
    batch_size: int | None = None
    prefetch: int | None = None   # consume only
    consumers: int | None = None
    queue_type: str = "classic"
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    nacked: int = 0
    queued: int | None = None     # messages found in the queue afterwards (publish)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")

    def percentile(self, p: float) -> float:
        return float(np.percentile(self.latencies_ms, p)) if self.latencies_ms else float("nan")

    def row(self) -> dict:
        confirm = {"none": "nenhuma", "message": "por mensagem", "batch": f"lote de {self.batch_size}",
                   "async": f"assíncrona (janela {self.batch_size})"}.get(self.confirm or "", "")
        return {"operação": "publicar" if self.operation == "publish" else "consumir",
                "confirmação": confirm, "persistente": self.persistent, "tamanho_bytes": self.size,
                "prefetch": self.prefetch, "consumidores": self.consumers, "fila": self.queue_type,
                "mensagens": self.messages, "segundos": round(self.seconds, 3),
                "msg/s": round(self.rate, 1), "p50_ms": round(self.percentile(50), 3),
                "p95_ms": round(self.percentile(95), 3), "p99_ms": round(self.percentile(99), 3),
                "nacks": self.nacked}


# queues -------------------------------------------------------------------------------------
def _declare_lab_queue(channel, queue_type: str) -> str:
    name = f"{LAB_PREFIX}{uuid.uuid4().hex[:10]}"
    channel.queue_declare(queue=name, durable=True,
                          arguments={"x-queue-type": queue_type, "x-expires": EXPIRES_MS})
    return name


def _delete_lab_queue(curso, name: str | None) -> None:
    if name:
        curso.management.delete_queue(name)


def _wait_for_depth(channel, queue: str, expected: int, timeout: float = 30.0) -> int:
    """Poll the exact ready count until it reaches `expected` (publishes still in flight)."""
    deadline = time.monotonic() + timeout
    while True:
        depth = channel.queue_declare(queue=queue, passive=True).method.message_count
        if depth >= expected or time.monotonic() > deadline:
            return depth
        time.sleep(0.02)


def _progress(show: bool | None, total: int | None, desc: str, big: bool):
    wanted = show if show is not None else (in_notebook() and big)
    return tqdm(total=total, desc=desc, disable=not wanted, leave=False, unit="msg")


def _properties(persistent: bool) -> pika.BasicProperties | None:
    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent) if persistent else None


# publishing ---------------------------------------------------------------------------------
def measure_publish(curso, count: int | None = 10_000, duration: float | None = None, size: int = 1024,
                    persistent: bool = False, confirm: str = "none", batch_size: int = 100,
                    queue_type: str = "classic", progress: bool | None = None,
                    timeout: float = 120.0) -> Measurement:
    """Publish `count` messages (or for `duration` seconds) of `size` bytes to a fresh queue.

    confirm: "none", "message", "batch" (wait for each batch of `batch_size`) or "async" (at most
    `batch_size` unconfirmed); see the module docstring for how each one works in pika.
    progress: None shows a bar in notebooks on long runs; True/False force it.
    """
    if confirm not in CONFIRM_MODES:
        raise CourseError(f"confirm deve ser um de {CONFIRM_MODES}, não {confirm!r}.")
    if count is None and duration is None:
        raise CourseError("Diga quantas mensagens (count) ou por quantos segundos (duration).")
    count = None if duration is not None else count
    body, props = b"x" * size, _properties(persistent)
    queue = None
    connection = pika.BlockingConnection(curso.params())
    try:
        channel = connection.channel()
        queue = _declare_lab_queue(channel, queue_type)
        bar = _progress(progress, count, f"publicando ({confirm})", (count or 0) >= 20_000 or (duration or 0) >= 2)
        with bar:
            if confirm in ("none", "message"):
                sent, seconds, latencies, nacked = _publish_blocking(
                    channel, queue, body, props, count, duration, confirm == "message", bar)
            else:
                sent, seconds, latencies, nacked = _ConfirmPublisher(
                    curso.params(), queue, body, props, count, duration, confirm, batch_size, bar,
                    timeout).run()
        queued = _wait_for_depth(channel, queue, sent - nacked)
    finally:
        if connection.is_open:
            connection.close()
        _delete_lab_queue(curso, queue)
    return Measurement("publish", sent, seconds, size, persistent, confirm=confirm,
                       batch_size=batch_size if confirm in ("batch", "async") else None,
                       queue_type=queue_type, latencies_ms=latencies, nacked=nacked, queued=queued)


def _chunk(count: int | None) -> int:
    """Messages between two progress/clock checks: small enough for a smooth bar, large
    enough that the check costs nothing next to the publishes."""
    return 1000 if count is None else max(1, min(1000, count // 100 or 1))


def _publish_blocking(channel, queue: str, body: bytes, props, count: int | None,
                      duration: float | None, confirm: bool, bar) -> tuple[int, float, list, int]:
    """The tutorial's loop. With confirm=True each basic_publish waits for the broker's ack."""
    if confirm:
        channel.confirm_delivery()
    publish, clock = channel.basic_publish, time.perf_counter
    latencies: list[float] = []
    sent = nacked = 0
    step = _chunk(count)
    start = clock()
    deadline = start + duration if duration is not None else math.inf
    while (count is None or sent < count) and clock() < deadline:
        n = step if count is None else min(step, count - sent)
        if not confirm:
            for _ in range(n):
                publish("", queue, body, props)
        else:
            for _ in range(n):
                t = clock()
                try:
                    publish("", queue, body, props)
                except pika.exceptions.NackError:
                    nacked += 1
                latencies.append(1000 * (clock() - t))
        sent += n
        bar.update(n)
    return sent, clock() - start, latencies, nacked


class _ConfirmPublisher:
    """Batches or a window of publisher confirms on pika's SelectConnection (see module doc)."""

    def __init__(self, params, queue, body, props, count, duration, mode, batch_size, bar, timeout):
        self.params, self.queue, self.body, self.props = params, queue, body, props
        self.count, self.duration, self.mode, self.batch_size = count, duration, mode, max(1, batch_size)
        self.bar, self.timeout = bar, timeout
        self.pending: dict[int, float] = {}   # delivery tag -> when it was published
        self.latencies: list[float] = []
        self.sent = self.nacked = 0
        self.start = self.end = 0.0
        self.error: Exception | None = None
        self.connection = self.channel = None

    def run(self) -> tuple[int, float, list, int]:
        self.connection = pika.SelectConnection(self.params, on_open_callback=self._on_open,
                                                on_open_error_callback=self._on_open_error,
                                                on_close_callback=self._on_closed)
        self.connection.ioloop.call_later(self.timeout, self._give_up)
        self.connection.ioloop.start()
        if self.error:
            raise self.error
        return self.sent, self.end - self.start, self.latencies, self.nacked

    def _on_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, connection, error) -> None:
        self.error = CourseError(f"Não consegui abrir a conexão assíncrona: {error}")
        connection.ioloop.stop()

    def _on_closed(self, connection, reason) -> None:
        if not self.end and not self.error:
            self.error = CourseError(f"A conexão fechou no meio da medição: {reason}")
        connection.ioloop.stop()

    def _on_channel(self, channel) -> None:
        self.channel = channel
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame) -> None:
        self.start = time.perf_counter()
        self._publish_more()

    def _more_to_send(self) -> bool:
        if self.count is not None:
            return self.sent < self.count
        return time.perf_counter() - self.start < self.duration

    def _publish_more(self) -> None:
        if not self._more_to_send():
            if not self.pending:
                self.end = time.perf_counter()
                self.connection.close()
            return
        if self.mode == "batch":
            room = 0 if self.pending else self.batch_size
        else:
            room = self.batch_size - len(self.pending)
        if self.count is not None:
            room = min(room, self.count - self.sent)
        for _ in range(room):
            self.channel.basic_publish("", self.queue, self.body, self.props)
            self.sent += 1  # delivery tags count publishes from 1 on this channel
            self.pending[self.sent] = time.perf_counter()

    def _on_confirm(self, frame) -> None:
        now, method = time.perf_counter(), frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        done = 0
        if method.multiple:  # everything up to this tag
            while self.pending and next(iter(self.pending)) <= method.delivery_tag:
                self.latencies.append(1000 * (now - self.pending.pop(next(iter(self.pending)))))
                done += 1
        elif method.delivery_tag in self.pending:
            self.latencies.append(1000 * (now - self.pending.pop(method.delivery_tag)))
            done = 1
        self.nacked += done if nack else 0
        self.bar.update(done)
        self._publish_more()

    def _give_up(self) -> None:
        self.error = CourseError(f"A medição passou de {self.timeout:.0f} s e foi interrompida.")
        if self.connection.is_open:
            self.connection.close()
        else:
            self.connection.ioloop.stop()


# consuming ----------------------------------------------------------------------------------
class _Counter:
    """Messages consumed by all consumer threads; remembers when the last one arrived."""

    def __init__(self, total: int):
        self.total, self.value, self.end = total, 0, 0.0
        self.lock = threading.Lock()

    def add(self) -> bool:
        with self.lock:
            self.value += 1
            if self.value >= self.total and not self.end:
                self.end = time.perf_counter()
            return self.value >= self.total


def _consumer(params, queue: str, prefetch: int, auto_ack: bool, counter: _Counter,
              barrier: threading.Barrier, deadline: float, gaps: list, errors: list) -> None:
    """One worker thread with its own connection (pika connections are not thread-safe)."""
    try:
        connection = pika.BlockingConnection(params)
    except Exception as exc:
        errors.append(exc)
        barrier.abort()
        return
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        barrier.wait(timeout=30)
        last = None
        for method, _, _ in channel.consume(queue, auto_ack=auto_ack, inactivity_timeout=0.1):
            now = time.perf_counter()
            if method is None:
                if counter.value >= counter.total or now > deadline:
                    break
                continue
            if last is not None:
                gaps.append(1000 * (now - last))
            last = now
            if not auto_ack:
                channel.basic_ack(delivery_tag=method.delivery_tag)
            if counter.add():
                break
        channel.cancel()
    except Exception as exc:
        errors.append(exc)
    finally:
        if connection.is_open:
            connection.close()


def measure_consume(curso, count: int = 10_000, size: int = 1024, prefetch: int = 10,
                    consumers: int = 1, persistent: bool = False, auto_ack: bool = False,
                    queue_type: str = "classic", progress: bool | None = None,
                    timeout: float = 120.0) -> Measurement:
    """Fill a fresh queue with `count` messages, then time `consumers` consumers draining it.

    Each consumer runs in its own thread with its own connection, sets
    basic_qos(prefetch_count=prefetch) and acks every message (unless auto_ack, where prefetch
    does not apply). Prefetch 1 makes each consumer wait a full round trip per message.
    """
    body, props = b"x" * size, _properties(persistent)
    queue = None
    connection = pika.BlockingConnection(curso.params())
    try:
        channel = connection.channel()
        queue = _declare_lab_queue(channel, queue_type)
        for _ in range(count):
            channel.basic_publish("", queue, body, props)
        if _wait_for_depth(channel, queue, count, timeout) < count:
            raise CourseError("As mensagens de teste não chegaram todas à fila a tempo.")
        seconds, gaps = _run_consumers(curso, queue, count, prefetch, consumers, auto_ack, progress, timeout)
    finally:
        if connection.is_open:
            connection.close()
        _delete_lab_queue(curso, queue)
    return Measurement("consume", count, seconds, size, persistent, prefetch=prefetch,
                       consumers=consumers, queue_type=queue_type, latencies_ms=gaps)


def _run_consumers(curso, queue, count, prefetch, consumers, auto_ack, progress, timeout):
    counter, gaps, errors = _Counter(count), [], []
    barrier = threading.Barrier(consumers + 1)
    deadline = time.perf_counter() + timeout
    threads = [threading.Thread(target=_consumer, daemon=True, name=f"curso-lab-consumer-{i}",
                                args=(curso.params(), queue, prefetch, auto_ack, counter, barrier,
                                      deadline, gaps, errors)) for i in range(consumers)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=30)
    except threading.BrokenBarrierError:
        raise CourseError(f"Os consumidores não conectaram: {errors[:1]}") from None
    start = time.perf_counter()
    with _progress(progress, count, f"consumindo (prefetch {prefetch})", count >= 20_000) as bar:
        while any(t.is_alive() for t in threads):
            time.sleep(0.1)
            bar.update(counter.value - bar.n)
    if errors:
        raise CourseError(f"Um consumidor falhou: {errors[0]!r}")
    if counter.value < count:
        raise CourseError(f"Só {counter.value} de {count} mensagens foram consumidas em {timeout:.0f} s.")
    return counter.end - start, gaps


# grids --------------------------------------------------------------------------------------
def _expand(grid: dict | list[dict]) -> list[dict]:
    """A list of settings as given, or a dict of lists expanded into every combination."""
    if isinstance(grid, dict):
        keys = list(grid)
        values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    return [dict(g) for g in grid]


def compare(curso, grid: dict | list[dict], progress: bool | None = None) -> pd.DataFrame:
    """Run every setting of `grid` and return one row per run (msg/s, latency percentiles).

    grid: a list of keyword dicts, or a dict of lists (every combination is run). The key
    "operation" picks "publish" (default; keywords of measure_publish) or "consume" (keywords
    of measure_consume).
    """
    settings = _expand(grid)
    rows = []
    show = progress if progress is not None else in_notebook()
    for setting in tqdm(settings, desc="laboratório", disable=not show or len(settings) < 2, leave=False):
        operation = setting.pop("operation", "publish")
        measure = measure_consume if operation == "consume" else measure_publish
        rows.append(measure(curso, progress=False, **setting).row())
    df = ThroughputTable(rows)
    if not df.empty:
        df[["prefetch", "consumidores"]] = df[["prefetch", "consumidores"]].astype("Int64")
    return df


# the table ----------------------------------------------------------------------------------
SETTING_COLUMNS = ["operação", "confirmação", "persistente", "tamanho_bytes", "prefetch", "consumidores",
                   "fila", "mensagens"]
HEADERS = {"tamanho_bytes": "tamanho (B)", "p50_ms": "p50 (ms)", "p95_ms": "p95 (ms)", "p99_ms": "p99 (ms)"}


def _applies(values: pd.Series) -> pd.Series:
    """The values of a setting where it applies (prefetch is NA for a publish, confirmação "" for
    a consume)."""
    return values[values.map(lambda v: not is_missing(v) and v != "")]


def _varies(df: pd.DataFrame, column: str) -> bool:
    return _applies(df[column]).astype(str).nunique() > 1


class ThroughputTable(BrTable):
    """What `compare` returns: one row per run (a DataFrame; its columns are in docs/toolkit.md).

    Shown in a notebook so that it fits the cell: pt-BR numbers and headers with their units; a
    setting that is the same in every run (and `nacks` when none) is written once, in the line
    above the table, instead of in a column; a setting that applies to no run is left out. The
    data keep every column: `df["msg/s"]`, `df[["prefetch", "msg/s"]]`.
    """

    def _constant(self) -> list[str]:
        if len(self) < 2:
            return [c for c in SETTING_COLUMNS if c in self and len(_applies(self[c]))] + \
                   (["nacks"] if "nacks" in self and (self["nacks"] == 0).all() else [])
        same = [c for c in SETTING_COLUMNS if c in self and len(_applies(self[c])) and not _varies(self, c)]
        if "nacks" in self and (self["nacks"] == 0).all():
            same.append("nacks")
        return same

    def display_frame(self) -> pd.DataFrame:
        keep = [c for c in self.columns if c not in self._constant()
                and not (c in SETTING_COLUMNS and not len(_applies(self[c])))]
        shown = formatted(pd.DataFrame(self)[keep])
        for c in keep:  # a setting that does not apply to a run (prefetch of a publish): '—'
            if c in SETTING_COLUMNS:
                shown[c] = shown[c].replace("", MISSING)
        shown.columns = [HEADERS.get(c, c) for c in keep]
        return shown

    def caption(self) -> str:
        parts = []
        for c in self._constant():
            value = format_number(_applies(self[c]).iloc[0] if c in SETTING_COLUMNS else self[c].iloc[0])
            parts.append(f"tamanho: {value} B" if c == "tamanho_bytes" else f"{c}: {value}")
        if not parts:
            return ""
        return ("Em todas as medições: " if len(self) > 1 else "Medição: ") + " · ".join(parts)


# drawing ------------------------------------------------------------------------------------
_LABEL_COLUMNS = ["operação", "confirmação", "persistente", "tamanho_bytes", "prefetch", "consumidores", "fila"]
MAX_WIDTH_IN = 8.2  # + Jupyter's 0.1 in padding each side: 840 px at 100 dpi, shown unshrunk
FONT = 9.0


def _row_labels(df: pd.DataFrame) -> list[str]:
    """Describe each row by the settings that differ between rows."""
    varying = [c for c in _LABEL_COLUMNS if c in df and _varies(df, c)] or ["operação"]
    names = {"confirmação": lambda v: "sem confirmação" if v == "nenhuma" else (f"confirmação {v}" if v else ""),
             "persistente": lambda v: "persistente" if v else "transitória",
             "tamanho_bytes": lambda v: f"{format_number(v)} B",
             "prefetch": lambda v: f"prefetch {format_number(v)}" if not is_missing(v) else "",
             "consumidores": lambda v: f"{format_number(v)} consumidor(es)" if not is_missing(v) else "",
             "fila": lambda v: f"fila {v}"}
    labels = []
    for _, row in df.iterrows():
        parts = [names.get(c, str)(row[c]) for c in varying]
        labels.append(" · ".join(p for p in parts if p))
    return labels


def plot_throughput(df: pd.DataFrame, title: str = "Laboratório de vazão") -> Figure:
    """Bars of msg/s per run and, beside them, latency p50 with a whisker up to p95 (log scale).

    Every number is written the pt-BR way (`course_utils.numbers`): the bar labels with the
    table's one decimal (5.891,1), the axes too (2.000; 0,1 1 10).
    """
    labels = _row_labels(df)
    fig = new_figure(MAX_WIDTH_IN, max(2.5, 0.42 * len(df) + 1.5))
    rate_ax, lat_ax = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
    y = np.arange(len(df))
    colors = ["#0072B2" if op == "publicar" else "#009E73" for op in df["operação"]]
    rate_ax.barh(y, df["msg/s"], color=colors)
    for yi, v in zip(y, df["msg/s"]):
        rate_ax.text(v, yi, " " + format_number(v, 1), va="center", fontsize=FONT - 0.5)
    rate_ax.set_yticks(y, labels, fontsize=FONT)
    rate_ax.invert_yaxis()
    rate_ax.set_xlabel("mensagens por segundo", fontsize=FONT)
    rate_ax.xaxis.set_major_formatter(number_formatter())
    rate_ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    rate_ax.margins(x=0.3)
    has = df["p50_ms"].notna()
    if has.any():
        p50, p95 = df.loc[has, "p50_ms"], df.loc[has, "p95_ms"]
        lat_ax.errorbar(p50, y[has.to_numpy()], xerr=[np.zeros(len(p50)), (p95 - p50).clip(lower=0)],
                        fmt="o", color="#D55E00", capsize=3)
        lat_ax.set_xscale("log")
        low, high = float(p50.min()), float(p95.max())
        decades = math.log10(high / low) if low > 0 and high > low else 0.0
        # 1-2-5 ticks on a short range, decades on a long one: tick labels never run together
        lat_ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 1.2 else (1.0,),
                                                  numticks=12))
        lat_ax.xaxis.set_major_formatter(number_formatter())
        lat_ax.xaxis.set_minor_formatter(NullFormatter())
    for yi in y[~has.to_numpy()]:
        lat_ax.text(0.02, yi, "não medida (sem confirmação)", transform=lat_ax.get_yaxis_transform(),
                    va="center", fontsize=FONT - 0.5, color="#777777")
    lat_ax.set_xlabel("latência p50 → p95 (ms, escala log)", fontsize=FONT)
    lat_ax.grid(axis="x", color="#EEEEEE")
    for ax in (rate_ax, lat_ax):
        ax.tick_params(axis="x", labelsize=FONT)
    fig.suptitle(title, fontsize=11)
    return fig
