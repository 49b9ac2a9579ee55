"""Routing table: publish routing keys (or header sets) to a real exchange and see where each lands.

    from course_utils.routing import routing_table
    routing_table(curso, "logs_topic", ["kern.critical", "app.info", "kern.info.disk"])

The result is a DataFrame message × queue (True where the message landed), drawn as a heat-map in
the notebook. Nothing is simulated: each message is published to the real exchange with
publisher confirms, and the broker's own routing is read back as the exact change of each
queue's ready count (AMQP passive declare), so direct, fanout, topic (`*`, `#`), headers
(`x-match` all / any), exchange-to-exchange bindings and alternate exchanges all behave as
RabbitMQ routes them.
"""
from __future__ import annotations

import uuid
from typing import Iterable, Union

import pandas as pd
import pika
import pika.exceptions
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ._toolkit import broker_error, display_figure, format_headers, new_figure, ready_and_consumers
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


def routing_table(curso, exchange: str, messages: Iterable[Message], queues: list[str] | None = None,
                  keep: bool = False, show: bool = True) -> pd.DataFrame:
    """Publish each message to `exchange` and return a DataFrame message × queue of where it landed.

    - messages: routing keys ("kern.info"), header dicts ({"cor": "azul"}) or (key, headers) pairs;
    - queues: the columns; by default every queue the exchange can reach (`bound_queues`);
    - keep: leave the test messages in the queues (default: take them out again; messages that
      were already there are put back in place, marked redelivered);
    - show: draw the heat-map in the notebook.
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
    table = pd.DataFrame(rows, index=pd.Index([i[0] for i in items], name="mensagem"),
                         columns=pd.Index(names, name="fila"), dtype=bool)
    table.attrs.update(exchange=exchange, exchange_type=info.get("type"),
                       bindings=binding_labels(curso, exchange, info.get("type")))
    if show:
        display_figure(plot_routing(table))
    return table


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


def plot_routing(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Heat-map of a routing table: a filled cell where the message landed."""
    rows, cols = table.shape
    keys = table.attrs.get("bindings") or {}
    columns = [f"{c}\n{keys[c]}" if keys.get(c) else str(c) for c in table.columns]
    widest = max((len(line) for label in columns for line in label.split("\n")), default=4)
    lines = max((label.count("\n") + 1 for label in columns), default=1)
    row_width = max((len(str(i)) for i in table.index), default=4)
    fig = new_figure(max(4.5, cols * max(1.1, 0.09 * widest + 0.3) + 0.08 * row_width + 1.5),
                     max(2.0, 0.45 * rows + 0.22 * lines + 1.0))
    ax = fig.add_subplot()
    values = table.to_numpy(dtype=float) if cols else [[0.0]] * rows
    ax.imshow(values, cmap=ListedColormap(["#F4F4F4", "#009E73"]), vmin=0, vmax=1, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            if table.iat[r, c]:
                ax.text(c, r, "✓", ha="center", va="center", color="white", fontsize=12, weight="bold")
    ax.set_xticks(range(cols), columns, fontsize=9)
    ax.xaxis.tick_top()
    dropped = [not table.iloc[r].any() for r in range(rows)]
    ax.set_yticks(range(rows), [f"{label}  (descartada)" if d else str(label)
                                for label, d in zip(table.index, dropped)])
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
