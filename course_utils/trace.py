"""Message trace: record what crosses the broker during a cell, with RabbitMQ's firehose tracer.

    from course_utils.trace import trace, plot_trace
    with trace(curso) as t:
        channel.basic_publish(exchange="tarefas", routing_key="", body=b"oi")
        ...                                   # consumers receive, ack, reject...
    t.table()                                 # one row per publish / delivery
    plot_trace(t.table())                     # timeline: who got which message

How it works: the management API switches the firehose on for the chapter's vhost only
(`PUT /api/vhosts/{vhost}` with `"tracing": true`, like `rabbitmqctl trace_on -p VHOST`). The broker
then copies every publish to the exchange `amq.rabbitmq.trace` with routing key
`publish.<exchange>` and every delivery with `deliver.<queue>`; the headers carry exchange_name,
routing_keys, properties, node, connection, channel, the queues a publish was routed to
(`routed_queues`) and, for deliveries, `redelivered`. The trace binds an exclusive queue to that
exchange with `#` and records what arrives, in a background thread with its own connection.

What the firehose does not show, and what the trace does about it:
- acks, nacks and rejects are not traced: `Trace.acks()` derives acks per queue from the
  management statistics (they refresh every statistics interval, so it waits for them);
- dead-lettering is an internal republish, not traced as a publish: a dead-lettered message is
  seen when it is delivered from the dead-letter queue, with the `x-death` header telling from
  which queue and why (rejected, expired, maxlen, delivery_limit); the table shows that reason;
- messages expired or dropped while nobody consumes them leave no trace at all.
The firehose costs the broker a copy of every message: switch it on only around a cell (the
context manager switches it off again, unless it was already on). It needs a user with the
administrator tag (the course's guest user has it).
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import pandas as pd
import pika
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._toolkit import DEAD_COLOR, DELIVER_COLOR, PUBLISH_COLOR, REDELIVER_COLOR, new_figure
from .numbers import BrTable, format_number, number_formatter
from .errors import CourseError

TRACE_EXCHANGE = "amq.rabbitmq.trace"
MARKER_PREFIX = "curso.trace.fim."
_tracing_lock = threading.Lock()
_tracing_users: dict[str, int] = {}   # vhost -> active traces in this process
_tracing_was_on: dict[str, bool] = {}

# The management API lists a new connection only at its next statistics refresh: about 1 s on the
# course's own nodes, 5 s on a default RabbitMQ (the Docker image). stop() waits up to this long,
# and only while a connection seen in the trace is still missing from the list.
NAMES_WAIT = 6.0
STABLE_S = 1.2  # acks(): figures unchanged this long = a whole statistics pass of the course's nodes (1 s)

COLUMNS = ["t_ms", "evento", "mensagem", "exchange", "routing_key", "fila", "roteada_para",
           "consumidor", "corpo", "motivo_dlx"]


@dataclass
class TraceEvent:
    """One firehose message: a publish (kind "publish") or a delivery (kind "deliver")."""

    t_ms: float
    kind: str
    exchange: str
    routing_keys: list[str]
    queue: str | None
    routed_queues: list[str]
    redelivered: bool
    connection: str
    channel: int | None
    body: bytes
    properties: dict = field(default_factory=dict)

    @property
    def death(self) -> dict | None:
        """The most recent x-death entry (dead-lettered messages only)."""
        deaths = (self.properties.get("headers") or {}).get("x-death")
        return deaths[0] if deaths else None

    @property
    def origin(self) -> tuple[str, tuple[str, ...], bytes]:
        """(exchange, routing keys, body) as first published: links a delivery to its publish."""
        headers = self.properties.get("headers") or {}
        deaths = headers.get("x-death")
        if deaths:
            first = deaths[-1]
            return (headers.get("x-first-death-exchange", first.get("exchange", "")),
                    tuple(first.get("routing-keys", [])), self.body)
        return self.exchange, tuple(self.routing_keys), self.body


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


def _event(method, properties, body: bytes, t_ms: float) -> TraceEvent:
    h = properties.headers or {}
    kind, _, name = method.routing_key.partition(".")
    return TraceEvent(
        t_ms=t_ms, kind=kind, exchange=_decode(h.get("exchange_name", "")),
        routing_keys=[_decode(k) for k in h.get("routing_keys", [])],
        queue=name if kind == "deliver" else None,
        routed_queues=[_decode(q) for q in h.get("routed_queues", [])],
        redelivered=bool(h.get("redelivered", 0)), connection=_decode(h.get("connection", "")),
        channel=h.get("channel"), body=body, properties=h.get("properties") or {})


# the firehose switch ------------------------------------------------------------------------
def _set_tracing(management, vhost: str, on: bool) -> None:
    try:
        management.set_tracing(on, vhost)
    except CourseError as exc:  # 401/403 for users without the administrator tag
        raise CourseError(f"Não consegui ligar o rastreamento (firehose) no vhost {vhost!r}: o usuário "
                          "precisa da tag administrator. Sem ele, use channel.consume(...) e observe "
                          f"as filas. ({exc})") from exc


def _acquire_tracing(management, vhost: str) -> None:
    with _tracing_lock:
        if _tracing_users.get(vhost, 0) == 0:
            _tracing_was_on[vhost] = bool((management.vhost_record(vhost) or {}).get("tracing"))
            if not _tracing_was_on[vhost]:
                _set_tracing(management, vhost, True)
        _tracing_users[vhost] = _tracing_users.get(vhost, 0) + 1


def _release_tracing(management, vhost: str) -> None:
    with _tracing_lock:
        _tracing_users[vhost] -= 1
        if _tracing_users[vhost] == 0 and not _tracing_was_on.pop(vhost, True):
            try:
                _set_tracing(management, vhost, False)
            except CourseError:
                pass  # the vhost may be gone already (cleanup ran first)


# the recorder -------------------------------------------------------------------------------
class Trace:
    """Records the firehose of the chapter's vhost between start() and stop() (or a `with`)."""

    def __init__(self, curso, max_events: int = 10_000, settle: float = 0.25, timeout: float = 10.0,
                 names_wait: float = NAMES_WAIT):
        self.curso = curso
        self.names_wait = names_wait
        self.max_events = max_events
        self.settle = settle
        self.timeout = timeout
        self.events: list[TraceEvent] = []
        self.dropped = 0
        self._marker = MARKER_PREFIX + uuid.uuid4().hex[:8]
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._names: dict[str, str] = {}   # connection id -> the name the client gave it
        self._listed: set[str] = set()      # connection ids the management API has listed
        self._stats_before: dict[str, dict] = {}
        self._t0 = 0.0

    def __enter__(self) -> "Trace":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop()
        except CourseError:
            if exc_type is None:  # never hide the cell's own exception
                raise

    def start(self) -> None:
        management = self.curso.management
        _acquire_tracing(management, self.curso.vhost)
        self._stats_before = _queue_stats(management)
        self._resolve_names()  # connections already listed now may be closed by the end
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="curso-trace", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.timeout) or self._error:
            self._stop.set()
            _release_tracing(management, self.curso.vhost)
            raise CourseError(f"O rastreamento não começou: {self._error or 'tempo esgotado'}")

    def stop(self) -> None:
        """Wait until the broker's trace of everything done so far has arrived, then stop."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(self.timeout)
        self._thread = None
        self._resolve_names(wait=self.names_wait)
        _release_tracing(self.curso.management, self.curso.vhost)
        if self._error:
            raise CourseError(f"O rastreamento parou no meio: {self._error!r}")

    def _run(self) -> None:
        try:
            connection = pika.BlockingConnection(self.curso.params())
        except Exception as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        try:
            self._consume(connection.channel())
        except Exception as exc:
            self._error = exc
            self._ready.set()
        finally:
            if connection.is_open:
                connection.close()

    def _consume(self, channel) -> None:
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.queue_bind(queue=queue, exchange=TRACE_EXCHANGE, routing_key="#")
        self._ready.set()
        marker_sent = marker_seen = None
        for method, properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.05):
            now = time.perf_counter()
            if method is not None:
                keys = [_decode(k) for k in (properties.headers or {}).get("routing_keys", [])]
                if keys == [self._marker]:
                    marker_seen = now
                elif not any(k.startswith(MARKER_PREFIX) for k in keys):  # not a nested trace's marker
                    self._record(_event(method, properties, body, 1000 * (now - self._t0)))
            if self._stop.is_set() and marker_sent is None:
                # the marker's own trace comes back after everything the broker traced before it
                channel.basic_publish(exchange="", routing_key=self._marker, body=b"")
                marker_sent = now
            if marker_seen and (method is None or now - marker_seen > self.settle):
                break
            if marker_sent and now - marker_sent > self.timeout:
                break
        channel.cancel()

    def _record(self, event: TraceEvent) -> None:
        if len(self.events) < self.max_events:
            self.events.append(event)
        else:
            self.dropped += 1

    def _resolve_names(self, wait: float = 0.0) -> None:
        """Map firehose connection ids ('127.0.0.1:52474 -> 127.0.0.1:5672') to the names clients
        gave their connections (`client_properties={"connection_name": ...}`, which the management
        API reports as `user_provided_name` too). The firehose carries only the id, and the API
        lists a new connection only after its next statistics refresh, hence the bounded wait
        while a traced connection is not listed yet (a connection closed before that never is)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                for c in self.curso.management.connections():
                    self._listed.add(c["name"])
                    name = c.get("user_provided_name") or (c.get("client_properties") or {}).get("connection_name")
                    if name:
                        self._names.setdefault(c["name"], name)
            except CourseError:
                return
            unknown = {e.connection for e in self.events} - self._listed
            if not unknown or time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def consumer_label(self, event: TraceEvent) -> str:
        """'nome da conexão (canal n)', with the client port when several share a name; a
        connection without a name (or not listed yet) shows as 'conexão :porta'."""
        name = self._names.get(event.connection)
        port = event.connection.split(" -> ")[0].rpartition(":")[2]
        shared = sum(1 for v in self._names.values() if v == name) > 1
        who = f"{name} :{port}" if name and shared else (name or f"conexão :{port}")
        return f"{who} (canal {event.channel})"

    # results ---------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per traced publish or delivery, in the order the broker traced them (a
        `BrTable`: a DataFrame shown with pt-BR numbers).

        `mensagem` numbers each publish (#1, #2, ...) and gives each delivery the number of the
        publish it came from, so a pivot shows who got which message.
        """
        self._resolve_names()
        numbers = _number_messages(self.events)
        known = self._known_queues()
        rows = [self._row(e, numbers.get(i), known) for i, e in enumerate(self.events)]
        return BrTable(rows, columns=COLUMNS)

    def _known_queues(self) -> set[str]:
        """Queues that exist now or received a delivery. (RabbitMQ 3.10 lists, for the default
        exchange, the routing key as routed queue even when no such queue exists.)"""
        seen = {e.queue for e in self.events if e.kind == "deliver"}
        try:
            return seen | {q["name"] for q in self.curso.management.queues()}
        except CourseError:
            return seen | {q for e in self.events for q in e.routed_queues}

    def _row(self, e: TraceEvent, number: int | None, known: set[str]) -> dict:
        death = e.death
        if e.kind == "publish":
            routed = [q for q in e.routed_queues if q in known]
            event, routed = "publicada", ", ".join(routed) or "(nenhuma)"
        else:
            event = "entregue (dead-letter)" if death else ("reentregue" if e.redelivered else "entregue")
            routed = ""
        return {"t_ms": round(e.t_ms, 1), "evento": event,
                "mensagem": f"#{number}" if number else "?",
                "exchange": e.exchange or "(padrão)", "routing_key": ", ".join(e.routing_keys),
                "fila": e.queue or "", "roteada_para": routed,
                "consumidor": self.consumer_label(e) if e.kind == "deliver" else "",
                "corpo": _preview(e.body),
                "motivo_dlx": f"{death.get('reason')} em {death.get('queue')}" if death else ""}

    def acks(self, timeout: float = 8.0) -> pd.DataFrame:
        """Deliveries (traced) and acks (management statistics) per queue during the trace.

        The firehose does not see acks; the queue statistics count them, but refresh only every
        statistics interval, so this waits (up to `timeout` s) until the statistics show at least
        the deliveries the trace saw. Deliveries with auto_ack never get an ack.
        """
        traced: dict[str, int] = {}
        for e in self.events:
            if e.kind == "deliver":
                traced[e.queue] = traced.get(e.queue, 0) + 1
        # A statistics pass can count a delivery before its ack (they are counted apart): once the
        # deliveries show, the figures must also hold for a whole pass (1 s on the course's nodes)
        # before they are read (seen once in CI: a dead-lettered message's ack read as 0).
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            now = _queue_stats(self.curso.management)
            delta = {q: _delta(now, self._stats_before, q) for q in traced}
            if delta != last:
                last, since = delta, time.monotonic()
            seen = all(d["deliver_get"] >= traced[q] for q, d in delta.items())
            if (seen and time.monotonic() - since >= STABLE_S) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        rows = [{"fila": q, "entregas": traced[q], "acks": delta[q]["ack"],
                 "sem_ack": now.get(q, {}).get("unacked", 0)} for q in sorted(traced)]
        return BrTable(rows, columns=["fila", "entregas", "acks", "sem_ack"])


def _number_messages(events: list[TraceEvent]) -> dict[int, int]:
    """Event index -> message number: publishes in order; each delivery matched to the publish
    with the same exchange, routing keys and body (dead-lettered ones through x-death)."""
    numbers: dict[int, int] = {}
    published: dict[tuple, list[int]] = {}
    delivered: dict[int, set] = {}
    count = 0
    for i, e in enumerate(events):
        if e.kind == "publish":
            count += 1
            numbers[i] = count
            published.setdefault(e.origin, []).append(count)
            delivered[count] = set()
            continue
        kind = "dead" if e.death else ("again" if e.redelivered else "first")
        for n in published.get(e.origin, []):
            if kind == "again" and (e.queue, "first") in delivered[n]:
                numbers[i] = n
                break
            if kind != "again" and (e.queue, kind) not in delivered[n]:
                numbers[i] = n
                delivered[n].add((e.queue, kind))
                break
    return numbers


def _preview(body: bytes, size: int = 40) -> str:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return f"<{len(body)} bytes>"
    return text if len(text) <= size else text[: size - 1] + "…"


def _queue_stats(management) -> dict[str, dict]:
    stats = {}
    for q in management.queues():
        ms = q.get("message_stats") or {}
        stats[q["name"]] = {"ack": ms.get("ack", 0), "deliver_get": ms.get("deliver_get", 0),
                            "unacked": q.get("messages_unacknowledged") or 0}
    return stats


def _delta(now: dict, before: dict, queue: str) -> dict[str, int]:
    a, b = now.get(queue, {}), before.get(queue, {})
    return {k: a.get(k, 0) - b.get(k, 0) for k in ("ack", "deliver_get")}


def trace(curso, **options) -> Trace:
    """A Trace to use as a context manager: `with trace(curso) as t: ...` then `t.table()`."""
    return Trace(curso, **options)


# drawing ----------------------------------------------------------------------------------
_STYLE = {"publicada": (">", PUBLISH_COLOR), "entregue": ("o", DELIVER_COLOR),
          "reentregue": ("o", REDELIVER_COLOR), "entregue (dead-letter)": ("X", DEAD_COLOR)}
# Layout rule: the picture is at most MAX_WIDTH_PX wide (JupyterLab shrinks wider images) and no
# text is smaller than LABEL_FONT points (11.8 px at 100 dpi). Over each event its message
# number, under each delivery who got it (the connection's name); a label that would touch its
# neighbour goes one line further out (up to LABEL_LINES lines), and the lanes grow to hold them.
# With x="ordem" the events are spaced so that the labels fit; with x="tempo" a label that still
# finds no free line is left out, and the picture says so.
MAX_WIDTH_PX = 840
LABEL_FONT = 8.5
LABEL_LINES = 3
_LINE = LABEL_FONT * 1.35 / 72  # inches per line of labels
_PAD = 0.08                     # inches kept free between two labels on a line


def _text_size(fig: Figure, renderer, text: str, size: float) -> tuple[float, float]:
    """(width, height) in inches of `text` at `size` points."""
    artist = fig.text(0, 0, text, fontsize=size)
    box = artist.get_window_extent(renderer)
    artist.remove()
    return box.width / fig.dpi, box.height / fig.dpi


def _stack(spans: list[tuple[float, float, int]], lines: int) -> dict[int, int]:
    """Line (0 = nearest the marker) of each label (x centre, width, id) so that labels on one
    line never touch; labels that fit on none of `lines` lines are left out."""
    ends = [float("-inf")] * lines
    placed = {}
    for x, width, key in sorted(spans):
        for line in range(lines):
            if x - width / 2 >= ends[line] + _PAD:
                ends[line] = x + width / 2
                placed[key] = line
                break
    return placed


def _stack_lanes(by_lane: list[list[int]], at: dict, widths: dict, lines: int) -> dict[int, int]:
    """`_stack` on every lane: line of each label (by row index) that found room."""
    placed: dict[int, int] = {}
    for members in by_lane:
        placed.update(_stack([(at[i], widths[i], i) for i in members if i in widths], lines))
    return placed


def _letter(k: int) -> str:
    """A, B, ..., Z, AA, AB, ..."""
    return _letter(k // 26 - 1) + chr(65 + k % 26) if k >= 26 else chr(65 + k)


def _wrap(text: str, fig: Figure, renderer, width: float) -> str:
    """Break a ' · '-separated list into lines no wider than `width` inches."""
    lines, current = [], ""
    for part in text.split(" · "):
        joined = f"{current} · {part}" if current else part
        if current and _text_size(fig, renderer, joined, LABEL_FONT + 0.5)[0] > width:
            lines.append(current)
            current = part
        else:
            current = joined
    return "\n".join(lines + [current])


def _who(consumer: str) -> str:
    return consumer.replace(" (canal 1)", "")


def plot_trace(table: pd.DataFrame, x: str = "ordem",
               title: str = "Rastreamento: quem recebeu cada mensagem") -> Figure:
    """Timeline of a trace table: publishes on their exchange's lane, deliveries on their
    queue's lane, a grey line from each publish to the deliveries of the same message; over each
    event its message number, under each delivery the connection that got it.

    x="ordem" spaces events evenly in the order the broker traced them (readable when many
    happen within a millisecond); x="tempo" uses the milliseconds since the trace started.
    """
    lanes = _lanes(table)
    rows = table.reset_index(drop=True)
    xs = rows["t_ms"].astype(float) if x == "tempo" else pd.Series(range(len(rows)), dtype=float)
    rows = rows.assign(lane=[_lane_of(r) for _, r in rows.iterrows()], x=xs.to_numpy())
    y = {lane: i for i, lane in enumerate(lanes)}
    fig = new_figure(8.0, 3.0)
    fig.set_layout_engine("none")
    renderer = FigureCanvasAgg(fig).get_renderer()
    numbers = {i: r["mensagem"] for i, r in rows.iterrows()}
    who = {i: _who(r["consumidor"]) for i, r in rows.iterrows() if r["consumidor"]}
    number_w = {i: _text_size(fig, renderer, t, LABEL_FONT)[0] for i, t in numbers.items()}
    who_w = {i: _text_size(fig, renderer, t, LABEL_FONT)[0] for i, t in who.items()}
    # margins: lane names on the left, the legend on the right, axis label and title
    left = max((_text_size(fig, renderer, lane, 10)[0] for lane in lanes), default=0.5) + 0.25
    right = max(_text_size(fig, renderer, e, LABEL_FONT)[0] for e in _STYLE) + 0.55
    bottom, top = (0.75 if x == "tempo" else 0.45), 0.45
    max_axes = MAX_WIDTH_PX / fig.dpi - 2 * float(rcParams["savefig.pad_inches"]) - left - right
    if x == "tempo":
        lo, hi = (float(xs.min()), float(xs.max())) if len(xs) else (0.0, 1.0)
        span = max(hi - lo, 1.0)
        x_range = (lo - 0.05 * span, hi + 0.05 * span)
        axes_w = max_axes
    else:
        x_range = (-0.7, max(len(rows) - 0.3, 0.7))
        slot = max([0.45] + [w + _PAD for w in number_w.values()] + [w + _PAD for w in who_w.values()])
        axes_w = min(max_axes, max(4.0, slot * (x_range[1] - x_range[0])))
    scale = axes_w / (x_range[1] - x_range[0])   # inches per x unit
    at = {i: (r["x"] - x_range[0]) * scale for i, r in rows.iterrows()}
    by_lane = [list(rows.index[rows["lane"] == lane]) for lane in lanes]
    above = _stack_lanes(by_lane, at, number_w, 2)
    below = _stack_lanes(by_lane, at, who_w, LABEL_LINES)
    legend_keys = ""
    if len(below) < len(who_w):  # names too long to fit: a letter per connection, named below
        keys = {name: _letter(k) for k, name in enumerate(dict.fromkeys(who.values()))}
        legend_keys = " · ".join(f"{key} = {name}" for name, key in keys.items())
        who = {i: keys[name] for i, name in who.items()}
        who_w = {i: _text_size(fig, renderer, t, LABEL_FONT)[0] for i, t in who.items()}
        below = _stack_lanes(by_lane, at, who_w, LABEL_LINES)
    skipped = len(numbers) - len(above) + len(who_w) - len(below)
    note = (f"\n({format_number(skipped)} rótulo(s) sem espaço ficaram de fora"
            + ('; x="ordem" espaça os eventos)' if x == "tempo" else ")")) if skipped and not table.empty else ""
    top += 0.2 if note else 0.0
    xlabel = "tempo desde o início do rastreamento (ms)" if x == "tempo" else "ordem dos eventos no broker"
    if legend_keys:
        xlabel += "\n" + _wrap(legend_keys, fig, renderer, axes_w)
        bottom += (xlabel.count("\n")) * 0.2
    lines_up = 1 + max(above.values(), default=0)
    lines_down = 1 + max(below.values(), default=-1)
    lane_h = 0.2 + (lines_up + lines_down) * _LINE + 0.12
    marker_y = (0.1 + lines_up * _LINE) / lane_h   # marker's place in its lane, from the top
    height = top + max(len(lanes), 1) * lane_h + bottom
    width = left + axes_w + right
    fig.set_size_inches(width, height)
    ax = fig.add_axes((left / width, bottom / height, axes_w / width, max(len(lanes), 1) * lane_h / height))
    ax.set_ylim(max(len(lanes), 1) - marker_y, -marker_y)
    ax.set_xlim(*x_range)
    first = rows[rows["evento"] == "publicada"].drop_duplicates("mensagem").set_index("mensagem")
    for _, r in rows[rows["evento"] != "publicada"].iterrows():
        if r["mensagem"] in first.index:
            p = first.loc[r["mensagem"]]
            ax.plot([p["x"], r["x"]], [y[p["lane"]], y[r["lane"]]], color="#BBBBBB", lw=0.8, zorder=1)
    for event, (marker, color) in _STYLE.items():
        part = rows[rows["evento"] == event]
        ax.scatter(part["x"], [y[lane] for lane in part["lane"]], marker=marker, color=color,
                   s=60, zorder=3, label=event)
    points = 72 * _LINE
    for i, r in rows.iterrows():
        if i in above:
            ax.annotate(numbers[i], (r["x"], y[r["lane"]]), xytext=(0, 6 + above[i] * points),
                        textcoords="offset points", ha="center", va="bottom", fontsize=LABEL_FONT,
                        color="#222222")
        if i in below:
            ax.annotate(who[i], (r["x"], y[r["lane"]]), xytext=(0, -6 - below[i] * points),
                        textcoords="offset points", ha="center", va="top", fontsize=LABEL_FONT,
                        color="#555555")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_xlabel(xlabel, fontsize=10 if not legend_keys else LABEL_FONT + 0.5)
    if x == "tempo":
        ax.xaxis.set_major_formatter(number_formatter())
    else:
        ax.set_xticks([])
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="#EEEEEE")
    handles = [Line2D([], [], marker=m, color=c, ls="", label=e) for e, (m, c) in _STYLE.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=LABEL_FONT,
              frameon=False)
    ax.set_title(title + note, fontsize=11)
    if table.empty:
        ax.text(0.5, 0.5, "(nada foi rastreado)", transform=ax.transAxes, ha="center", va="center")
    return fig


def _lane_of(row) -> str:
    return f"exchange {row['exchange']}" if row["evento"] == "publicada" else f"fila {row['fila']}"


def _lanes(table: pd.DataFrame) -> list[str]:
    exchanges = [f"exchange {x}" for x in dict.fromkeys(table.loc[table["evento"] == "publicada", "exchange"])]
    queues = [f"fila {q}" for q in dict.fromkeys(table.loc[table["evento"] != "publicada", "fila"])]
    return exchanges + queues
