"""Routing table: publish routing keys (or header sets) to a real exchange and see where each lands.

    from course_utils.routing import routing_table
    routing_table(curso, "logs_topic", ["kern.critical", "app.info", "kern.info.disk"])

The result is a DataFrame message × queue (True where the message landed), a `RoutingTable`
whose notebook display is the heat-map (one picture; derived frames show as True/False tables).
Nothing is simulated: each message is published to the real exchange with publisher confirms,
and the broker's own routing is read back as the exact change of each queue's ready count (AMQP
passive declare), so direct, fanout, topic (`*`, `#`), headers (`x-match` all / any),
exchange-to-exchange bindings and alternate exchanges all behave as RabbitMQ routes them.
"""
from __future__ import annotations

import uuid
from typing import Iterable, Union

import pandas as pd
import pika
import pika.exceptions
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ._toolkit import (broker_error, display_figure, format_headers, in_notebook, new_figure,
                       ready_and_consumers)
from .errors import CourseError
from .management import ManagementError

Message = Union[str, dict, tuple]
PROBE_PREFIX = "curso-sonda"


def as_message(message: Message) -> tuple[str, str, dict | None]:
    """(label, routing_key, headers) of a routing key, a header dict or a (key, headers) pair."""
    if isinstance(message, str):
        return (message if message else '""'), message, None
    if isinstance(message, dict):
        return format_headers(message) or "(sem cabeçalhos)", "", dict(message)
    if isinstance(message, tuple) and len(message) == 2:
        key, headers = message
        return f"{key or chr(34) * 2} + {format_headers(headers)}", key, dict(headers or {})
    raise CourseError(f"Mensagem inválida: {message!r}. Use uma routing key (str), um dict de "
                      "cabeçalhos ou um par (routing_key, cabeçalhos).")


def exchange_info(curso, exchange: str) -> dict:
    """The exchange as the management API describes it; pt-BR error if it is missing."""
    try:
        return curso.management.exchange(exchange or "amq.default")
    except ManagementError as exc:
        if exc.status == 404:
            raise CourseError(f"A exchange {exchange!r} não existe no vhost {curso.vhost!r}. "
                              "Declare-a antes com channel.exchange_declare(...).") from exc
        raise


def bound_queues(curso, exchange: str) -> list[str]:
    """Queues a message published to `exchange` can reach: bound directly, through
    exchange-to-exchange bindings, or through an alternate exchange."""
    bindings = curso.management.bindings()
    alternates = {e["name"]: e.get("arguments", {}).get("alternate-exchange")
                  for e in curso.management.exchanges()}
    seen, queues, todo = {exchange}, [], [exchange]
    while todo:
        source = todo.pop(0)
        hops = [(b["destination_type"], b["destination"]) for b in bindings if b["source"] == source]
        if alternates.get(source):
            hops.append(("exchange", alternates[source]))
        for kind, name in hops:
            if kind == "queue" and name not in queues:
                queues.append(name)
            elif kind == "exchange" and name not in seen:
                seen.add(name)
                todo.append(name)
    return queues


def binding_labels(curso, exchange: str, exchange_type: str | None) -> dict[str, str]:
    """{queue: "key1 | key2"} of the queues bound directly to `exchange` (for the picture)."""
    labels: dict[str, list[str]] = {}
    for b in curso.management.bindings():
        if b["source"] != exchange or b["destination_type"] != "queue" or not exchange:
            continue
        if exchange_type == "headers":
            text = format_headers(b.get("arguments")).replace(", ", "\n")
        elif exchange_type == "fanout":
            text = ""
        else:
            text = b["routing_key"] or '""'
        labels.setdefault(b["destination"], []).append(text)
    return {q: "\n".join(t for t in texts if t) for q, texts in labels.items()}


def _depths(connection: pika.BlockingConnection, queues: list[str]) -> dict[str, int]:
    counts = ready_and_consumers(connection, queues)
    missing = [q for q, c in counts.items() if c is None]
    if missing:
        raise CourseError(f"Não consigo ler a fila {missing[0]!r} (apagada, ou exclusiva de outra "
                          "conexão). A tabela de roteamento só funciona com filas que ela pode contar.")
    busy = [q for q, c in counts.items() if c[1] > 0]
    if busy:
        raise CourseError(f"A fila {busy[0]!r} tem consumidores: eles levariam as mensagens de teste "
                          "antes que eu as contasse. Cancele os consumidores (channel.cancel()) ou use "
                          "trace() para ver as entregas.")
    return {q: c[0] for q, c in counts.items()}


def _publish(channel, exchange: str, key: str, headers: dict | None, probe_id: str, label: str) -> bool:
    """Publish one probe with confirms; False if the broker found no queue for it."""
    properties = pika.BasicProperties(headers=headers, message_id=probe_id)
    try:
        channel.basic_publish(exchange=exchange, routing_key=key, body=label.encode(),
                              properties=properties, mandatory=True)
        return True
    except pika.exceptions.UnroutableError:
        return False


def _cell_number() -> int | None:
    """The number of the notebook cell running now (None outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return None
    shell = get_ipython()
    return getattr(shell, "execution_count", None) if shell is not None else None


class RoutingTable(pd.DataFrame):
    """What `routing_table` returns: a DataFrame message × queue (bool).

    In a notebook it shows as one thing, the heat-map (`plot_routing`), never as the heat-map
    plus a True/False grid: `routing_table(..., show=True)` draws it at once (so an assigned
    result is seen too), and the same table returned as that cell's value is not drawn again;
    in a later cell, `tabela` alone draws it. Frames derived from it (`tabela.rename(...)`,
    `tabela[["a", "b"]]`, `tabela.loc[...]`) are plain DataFrames and show as True/False tables;
    `print(tabela)` prints the grid.
    """

    _shown_in_cell = None  # the cell in which routing_table(show=True) drew it

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if not in_notebook():  # a terminal: the grid as text
            display(pd.DataFrame(self))
            return
        cell = _cell_number()
        if cell is not None and cell == self._shown_in_cell:
            return
        display_figure(plot_routing(self))

    def show(self) -> "RoutingTable":
        """Draw the heat-map in the notebook now (no-op elsewhere); returns the table."""
        display_figure(plot_routing(self))
        object.__setattr__(self, "_shown_in_cell", _cell_number())
        return self


def routing_table(curso, exchange: str, messages: Iterable[Message], queues: list[str] | None = None,
                  keep: bool = False, show: bool = True) -> pd.DataFrame:
    """Publish each message to `exchange` and return a DataFrame message × queue of where it landed.

    - messages: routing keys ("kern.info"), header dicts ({"cor": "azul"}) or (key, headers) pairs;
    - queues: the columns; by default every queue the exchange can reach (`bound_queues`);
    - keep: leave the test messages in the queues (default: take them out again; messages that
      were already there are put back in place, marked redelivered);
    - show: draw the heat-map in the notebook now (the returned table is then not drawn again
      as the cell's value: see `RoutingTable`).
    The queues must have no consumers while it runs (they would take the messages first).
    """
    items = [as_message(m) for m in messages]
    info = exchange_info(curso, exchange)
    if info.get("internal"):
        raise CourseError(f"A exchange {exchange!r} é interna (internal=True): clientes não podem "
                          "publicar nela, só outras exchanges.")
    names = list(queues) if queues is not None else bound_queues(curso, exchange)
    run = uuid.uuid4().hex[:8]
    rows, landed = [], {q: 0 for q in names}
    connection = pika.BlockingConnection(curso.params())
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        depth = _depths(connection, names)
        for i, (label, key, headers) in enumerate(items):
            try:
                _publish(channel, exchange, key, headers, f"{PROBE_PREFIX}-{run}-{i}", label)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise broker_error(exc, f"a publicação na exchange {exchange!r}") from exc
            now = _depths(connection, names)
            rows.append({q: now[q] > depth[q] for q in names})
            landed.update({q: landed[q] + (now[q] - depth[q]) for q in names})
            depth = now
        if not keep:
            _take_back(connection, landed, run)
    finally:
        if connection.is_open:
            connection.close()
    table = RoutingTable(rows, index=pd.Index([i[0] for i in items], name="mensagem"),
                         columns=pd.Index(names, name="fila"), dtype=bool)
    table.attrs.update(exchange=exchange, exchange_type=info.get("type"),
                       bindings=binding_labels(curso, exchange, info.get("type")))
    return table.show() if show else table


def _take_back(connection: pika.BlockingConnection, landed: dict[str, int], run: str) -> None:
    """Remove this run's probes; requeue (in place) whatever else basic_get met on the way."""
    channel = connection.channel()
    for queue, count in landed.items():
        others, found = [], 0
        while found < count:
            method, properties, _ = channel.basic_get(queue=queue, auto_ack=False)
            if method is None:
                break
            if (properties.message_id or "").startswith(f"{PROBE_PREFIX}-{run}-"):
                channel.basic_ack(delivery_tag=method.delivery_tag)
                found += 1
            else:
                others.append(method.delivery_tag)
        for tag in others:
            channel.basic_nack(delivery_tag=tag, requeue=True)
    channel.close()


MAX_WIDTH_IN = 8.2  # + Jupyter's 0.1 in padding each side: 840 px at 100 dpi, shown unshrunk
FONT = 9.0


def plot_routing(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Heat-map of a routing table: a filled cell where the message landed.

    Columns are as wide as their names and binding keys; when that would make the picture wider
    than MAX_WIDTH_IN, every other column name moves one step up (so each may be two columns
    wide), or, when even that is too narrow, the names turn upright: the text never shrinks."""
    rows, cols = table.shape
    keys = table.attrs.get("bindings") or {}
    columns = [f"{c}\n{keys[c]}" if keys.get(c) else str(c) for c in table.columns]
    dropped = [not table.iloc[r].any() for r in range(rows)]
    row_labels = [f"{label}  (descartada)" if d else str(label) for label, d in zip(table.index, dropped)]
    measure = new_figure(1, 1)
    renderer = FigureCanvasAgg(measure).get_renderer()

    def size(text: str) -> tuple[float, float]:
        box = measure.text(0, 0, text, fontsize=FONT).get_window_extent(renderer)
        return box.width / measure.dpi, box.height / measure.dpi

    col_sizes = [size(c) for c in columns] or [(0.4, 0.2)]
    widest, tallest = max(w for w, _ in col_sizes), max(h for _, h in col_sizes)
    row_w = max((size(r)[0] for r in row_labels), default=0.4)
    room = MAX_WIDTH_IN - 2 * float(rcParams["savefig.pad_inches"]) - row_w - 0.4
    cell_w = max(0.55, widest + 0.2)
    staggered = upright = False
    if cols * cell_w > room:  # too wide: every other name one step higher, or else upright
        cell_w = max(0.45, room / max(cols, 1))
        staggered = widest + 0.15 <= 2 * cell_w
        upright = not staggered
        if upright:
            cell_w = max(0.45, min(cell_w, tallest + 0.2))
    head = widest if upright else tallest * (2.1 if staggered else 1)
    fig = new_figure(min(MAX_WIDTH_IN, row_w + 0.5 + max(cols, 1) * cell_w),
                     max(2.0, 0.42 * rows + head + 0.9))
    ax = fig.add_subplot()
    values = table.to_numpy(dtype=float) if cols else [[0.0]] * rows
    ax.imshow(values, cmap=ListedColormap(["#F4F4F4", "#009E73"]), vmin=0, vmax=1, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            if table.iat[r, c]:
                ax.text(c, r, "✓", ha="center", va="center", color="white", fontsize=12, weight="bold")
    ax.set_xticks(range(cols), columns, fontsize=FONT, rotation=90 if upright else 0)
    ax.xaxis.tick_top()
    if staggered:
        for tick in ax.xaxis.get_major_ticks()[1::2]:
            tick.set_pad(tick.get_pad() + 72 * tallest * 1.1)
    ax.set_yticks(range(rows), row_labels, fontsize=FONT)
    for tick, d in zip(ax.get_yticklabels(), dropped):
        if d:
            tick.set_color("#D55E00")
    ax.set_xticks([x - 0.5 for x in range(1, cols)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, rows)], minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="both", length=0)
    ex, kind = table.attrs.get("exchange"), table.attrs.get("exchange_type")
    default = f"Roteamento na exchange {ex!r} ({kind})" if ex is not None else "Roteamento"
    ax.set_title(title or default, fontsize=11)
    return fig
