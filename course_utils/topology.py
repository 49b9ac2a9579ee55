"""Topology picture: producers → exchanges → queues → consumers of a chapter's vhost.

    from course_utils.topology import show_topology
    show_topology(curso)          # draws the picture in the notebook, returns the graph

`topology_graph(curso)` reads exchanges, queues, bindings and consumers (management API) and the
exact ready count of every queue (AMQP passive declare) into a `TopologyGraph` (a networkx
DiGraph); `plot_topology(graph)` draws it and returns the Figure. Tests assert on the graph.

Nodes are `(kind, name)` tuples, kind in "producer", "exchange", "queue", "consumer". Edges carry
`keys` (binding keys), `arguments` (header matches) and the `label` drawn on them.
"""
from __future__ import annotations

import networkx as nx
import pika
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch
from matplotlib.path import Path

from ._toolkit import (CLIENT_COLOR, EXCHANGE_COLORS, QUEUE_COLOR, display_figure, format_headers,
                       new_figure, ready_and_consumers)
from .numbers import format_number

DEFAULT_EXCHANGE = "(padrão)"
GENERIC_PRODUCER = "produtor"
TRACE_EXCHANGE = "amq.rabbitmq.trace"


class TopologyGraph(nx.DiGraph):
    """A networkx DiGraph of the vhost's topology, with a short pt-BR repr for notebooks."""

    def names(self, kind: str) -> list[str]:
        """Names of the nodes of one kind ("producer", "exchange", "queue", "consumer")."""
        return [name for k, name in self.nodes if k == kind]

    def __repr__(self) -> str:
        counts = {k: len(self.names(k)) for k in ("exchange", "queue", "consumer")}
        return (f"<Topologia de {self.graph.get('vhost', '?')!r}: {counts['exchange']} exchanges, "
                f"{counts['queue']} filas, {counts['consumer']} consumidores, "
                f"{self.number_of_edges()} bindings>")

    __str__ = __repr__


# reading the broker ------------------------------------------------------------------------
def topology_graph(curso, show_default: bool = False, show_internal: bool = False,
                   producers: dict[str, str | list[str]] | bool | None = None,
                   consumers: bool = True) -> TopologyGraph:
    """Build the topology of the chapter's vhost as a graph.

    - show_default: include the default exchange "" (every queue is bound to it by its name);
    - show_internal: include internal exchanges (amq.rabbitmq.trace, exchanges declared
      internal=True), unused predeclared `amq.*` exchanges and the tracer's own queues;
    - producers: None draws one generic "produtor" pointing at every exchange that routes
      somewhere and has no exchange upstream; a dict {"nome": "exchange" or [...]} draws named
      producers (use "" for the default exchange); False draws none. RabbitMQ does not record
      which client publishes to which exchange, so producers are never read from the broker;
    - consumers: draw one node per consumer (connection name and channel) of each queue. The
      broker lists consumers in its statistics, which lag (up to 5 s on a default broker);
      the number of consumers written in each queue's box is exact.
    Ready counts are exact (AMQP passive declare); unacked counts come from the statistics too.
    """
    m = curso.management
    exchanges = {e["name"]: e for e in m.exchanges()}
    queues = {q["name"]: q for q in m.queues()}
    bindings = m.bindings()
    hidden_queues = set() if show_internal else _tracer_queues(bindings)
    graph = TopologyGraph(vhost=curso.vhost)
    shown = _visible_exchanges(exchanges, bindings, show_default, show_internal)
    for name in sorted(shown):
        ex = exchanges[name]
        graph.add_node(("exchange", name), kind="exchange", name=name, type=ex["type"],
                       internal=ex.get("internal", False), durable=ex.get("durable", True),
                       label=_exchange_label(name, ex["type"]))
    visible_queues = sorted(set(queues) - hidden_queues)
    counts = _queue_counts(curso, queues, visible_queues)
    for name in visible_queues:
        ready, unacked, consumer_count = counts[name]
        graph.add_node(("queue", name), kind="queue", name=name,
                       label=_queue_label(queues[name], ready, unacked, consumer_count),
                       queue_type=queues[name].get("type", "classic"), durable=queues[name].get("durable"),
                       exclusive=queues[name].get("exclusive"), ready=ready, unacked=unacked,
                       consumers=consumer_count)
    _add_bindings(graph, bindings, exchanges)
    _add_producers(graph, producers)
    if consumers:
        _add_consumers(graph, m)
    return graph


def _tracer_queues(bindings: list[dict]) -> set[str]:
    return {b["destination"] for b in bindings
            if b["source"] == TRACE_EXCHANGE and b["destination_type"] == "queue"}


def _visible_exchanges(exchanges: dict, bindings: list[dict], show_default: bool,
                       show_internal: bool) -> set[str]:
    used = {b["source"] for b in bindings} | {b["destination"] for b in bindings
                                               if b["destination_type"] == "exchange"}
    shown = set()
    for name, ex in exchanges.items():
        if name == "":
            if show_default:
                shown.add(name)
        elif show_internal:
            shown.add(name)
        elif not ex.get("internal") and not (name.startswith("amq.") and name not in used):
            shown.add(name)
    return shown


def _queue_counts(curso, queues: dict, names: list[str]) -> dict[str, tuple[int, int, int]]:
    """(ready, unacked, consumers) per queue. Ready and consumers are exact (AMQP passive
    declare); unacked comes from the management statistics, which lag by up to one statistics
    interval. Exclusive queues of other connections cannot be declared: statistics only."""
    exact: dict = {}
    inspectable = [n for n in names if not queues[n].get("exclusive")]
    if inspectable:
        connection = pika.BlockingConnection(curso.params())
        try:
            exact = ready_and_consumers(connection, inspectable)
        finally:
            connection.close()
    result = {}
    for name in names:
        stats = queues[name]
        ready, consumers = exact.get(name) or (stats.get("messages_ready") or 0, stats.get("consumers") or 0)
        result[name] = (ready, stats.get("messages_unacknowledged") or 0, consumers)
    return result


def _exchange_label(name: str, ex_type: str) -> str:
    return f"{name or DEFAULT_EXCHANGE}\n[{ex_type}]"


def _queue_label(queue: dict, ready: int, unacked: int, consumers: int) -> str:
    kind = queue.get("type", "classic")
    extra = [] if kind == "classic" else [kind]
    if queue.get("exclusive"):
        extra.append("exclusiva")
    title = queue["name"] + (f" ({', '.join(extra)})" if extra else "")
    label = f"{title}\n{format_number(ready)} prontas · {format_number(unacked)} sem ack"
    if consumers:
        label += f"\n{format_number(consumers)} consumidor" + ("es" if consumers > 1 else "")
    return label


def _binding_text(source_type: str, key: str, arguments: dict) -> str:
    if source_type == "headers":
        args = dict(arguments or {})
        match = args.pop("x-match", "all")
        return f"{match}: {format_headers(args)}" if args else f"{match}: (nenhum)"
    if source_type == "fanout":
        return ""
    return key if key else '""'


def _add_bindings(graph: TopologyGraph, bindings: list[dict], exchanges: dict) -> None:
    for b in bindings:
        src, dst = ("exchange", b["source"]), (b["destination_type"], b["destination"])
        if src not in graph or dst not in graph:
            continue
        if not graph.has_edge(src, dst):
            graph.add_edge(src, dst, keys=[], arguments=[], texts=[])
        edge = graph.edges[src, dst]
        edge["keys"].append(b["routing_key"])
        edge["arguments"].append(b.get("arguments") or {})
        text = _binding_text(exchanges[b["source"]]["type"], b["routing_key"], b.get("arguments"))
        if text and text not in edge["texts"]:
            edge["texts"].append(text)
    for _, _, data in graph.edges(data=True):
        data["label"] = "\n".join(data.pop("texts"))


def _entry_exchanges(graph: TopologyGraph) -> list[tuple[str, str]]:
    return [n for n in graph if n[0] == "exchange" and graph.out_degree(n) > 0
            and not any(p[0] == "exchange" for p in graph.predecessors(n))
            and not graph.nodes[n].get("internal")]


def _add_producers(graph: TopologyGraph, producers) -> None:
    if producers is False:
        return
    if producers is None:
        targets = _entry_exchanges(graph)
        if targets:
            graph.add_node(("producer", GENERIC_PRODUCER), kind="producer", name=GENERIC_PRODUCER,
                           label=GENERIC_PRODUCER, generic=True)
            for target in targets:
                graph.add_edge(("producer", GENERIC_PRODUCER), target, keys=[], arguments=[], label="")
        return
    for name, targets in producers.items():
        graph.add_node(("producer", name), kind="producer", name=name, label=name, generic=False)
        for exchange in [targets] if isinstance(targets, str) else targets:
            if ("exchange", exchange) in graph:
                graph.add_edge(("producer", name), ("exchange", exchange), keys=[], arguments=[], label="")


def _add_consumers(graph: TopologyGraph, management) -> None:
    names = {c["name"]: c.get("client_properties", {}).get("connection_name") or c["name"]
             for c in management.connections()}
    for c in management.consumers():
        queue = ("queue", c["queue"]["name"])
        if queue not in graph:
            continue
        details = c.get("channel_details") or {}  # the API briefly shows [] for a new consumer
        if details.get("connection_name"):
            who = names.get(details["connection_name"], details["connection_name"])
            name = f"{who} (canal {details.get('number', '?')})"
        else:  # not known yet: each consumer still its own node, by its tag
            name = f"consumidor {(c.get('consumer_tag') or '?')[:18]}"
        graph.add_node(("consumer", name), kind="consumer", name=name, label=name,
                       consumer_tag=c.get("consumer_tag"), prefetch=c.get("prefetch_count"))
        graph.add_edge(queue, ("consumer", name), keys=[], arguments=[], label="")


# drawing ----------------------------------------------------------------------------------
# Layout rule (what keeps the picture readable in JupyterLab, which shows a PNG at its natural
# size up to the cell's width and shrinks anything wider; a cell's output is 848 px wide in a
# 1280-px window, ~900-1000 px on a larger laptop screen):
# - the picture is at most MAX_WIDTH_PX wide as Jupyter prints it and grows in height instead:
#   columns are only as wide as their boxes, the gaps only as wide as the binding keys they carry;
#   when that is still too wide, queue boxes break their counts onto separate lines, then keys
#   wrap further;
# - every text is at least LABEL_FONT points (11.8 px at 100 dpi): at 10 px even if shrunk to 85 %;
# - each binding key is placed on its own arrow at the first free spot among several positions
#   along it (middle first), touching no box, arrowhead or other key; if an arrow has no free
#   spot, the gaps it crosses widen while the width allows, then narrower keys and compact boxes
#   are tried, and last the rows around that arrow's end move apart.
MAX_WIDTH_PX = 840
NODE_FONT = 9.0
LABEL_FONT = 8.5
TITLE_FONT = 11.0
_MARGIN = 0.05          # inches around the drawing
_PLAIN_GAP = 0.5        # between columns whose arrows carry no key
_KEY_GAP = (1.5, 2.4)   # min / max gap for columns whose arrows carry keys
_ROW_GAP = 0.3          # vertical space between two boxes of a column
_CLEAR = 0.07           # space kept free around every text box
_SPOTS = (0.5, 0.58, 0.42, 0.66, 0.34, 0.74, 0.26, 0.82, 0.18, 0.9, 0.1)


def _layers(graph: TopologyGraph) -> dict:
    """Column of each node (longest-path layering): producers 0, exchanges 1 + their depth in
    exchange-to-exchange bindings, each queue right after its deepest exchange, consumers after
    their queue."""
    exchanges = [n for n in graph if n[0] == "exchange"]
    layer = {n: 0 for n in graph if n[0] == "producer"}
    depth = {n: 0 for n in exchanges}
    e2e = [(u, v) for u, v in graph.edges if u[0] == "exchange" and v[0] == "exchange"]
    for _ in range(len(depth)):  # bounded, so a cycle of exchange bindings cannot loop forever
        changed = False
        for u, v in e2e:
            if depth[v] < depth[u] + 1 <= len(depth):
                depth[v], changed = depth[u] + 1, True
        if not changed:
            break
    layer.update({n: depth[n] + 1 for n in exchanges})
    for n in graph:
        if n[0] == "queue":
            layer[n] = 1 + max((layer[p] for p in graph.predecessors(n) if p[0] == "exchange"), default=1)
    for n in graph:
        if n[0] == "consumer":
            layer[n] = 1 + max((layer[p] for p in graph.predecessors(n)), default=2)
    return layer


def _with_waypoints(graph: TopologyGraph) -> tuple[nx.DiGraph, dict, dict]:
    """The graph to lay out: every arrow that skips columns is split by a waypoint in each
    column it crosses, so it is routed between that column's boxes instead of behind them.
    Returns (layout graph, column of each node, path of nodes of each arrow)."""
    layer = _layers(graph)
    layout = nx.DiGraph()
    layout.add_nodes_from(graph)
    paths = {}
    for u, v in graph.edges:
        path = [u]
        for column in range(layer[u] + 1, layer[v]):
            waypoint = ("~waypoint", f"{len(layer):05d}")
            layer[waypoint] = column
            path.append(waypoint)
        path.append(v)
        nx.add_path(layout, path)
        paths[u, v] = path
    return layout, layer, paths


def _columns(layout: nx.DiGraph, layer: dict) -> list[list]:
    """Nodes per column, each column ordered by its parents' mean row (barycenter heuristic:
    fewer crossing arrows)."""
    row: dict = {}
    columns = []
    for column in sorted(set(layer.values())):
        members = [n for n in layout if layer[n] == column]
        members.sort(key=lambda n: (_barycenter(layout, n, row), n))
        for i, n in enumerate(members):
            row[n] = i - (len(members) - 1) / 2
        columns.append(members)
    return columns


def _barycenter(graph: TopologyGraph, node, row: dict) -> float:
    placed = [row[p] for p in graph.predecessors(node) if p in row]
    return sum(placed) / len(placed) if placed else float("inf")


def _node_style(data: dict) -> dict:
    kind = data["kind"]
    if kind == "exchange":
        return dict(boxstyle="round,pad=0.4", fc=EXCHANGE_COLORS.get(data["type"], "#BBBBBB"), ec="#333333")
    if kind == "queue":
        return dict(boxstyle="square,pad=0.4", fc=QUEUE_COLOR, ec="#333333")
    return dict(boxstyle="round4,pad=0.35", fc=CLIENT_COLOR, ec="#777777",
                ls="--" if data.get("generic") else "-")


def _key_text(label: str, width: int) -> str:
    """A binding label as drawn: one binding per line; header matches broken after commas when a
    line is longer than `width` characters ("all: cor=azul, tam=g" -> "all:\ncor=azul\ntam=g")."""
    lines = []
    for line in label.split("\n"):
        if len(line) <= width:
            lines.append(line)
            continue
        head, sep, rest = line.partition(": ")
        parts = ([head + ":"] if sep else []) + (rest if sep else line).split(", ")
        current = ""
        for part in parts:
            joined = f"{current} {part}" if current else part
            if current and len(joined) > width:
                lines.append(current)
                current = part
            else:
                current = joined
        lines.append(current)
    return "\n".join(lines)


def _node_text(data: dict, compact: bool) -> str:
    """A box's text as drawn; compact puts a queue's counts on lines of their own."""
    return data["label"].replace(" · ", "\n") if compact and data["kind"] == "queue" else data["label"]


class _Box:
    """A text box in inches: centre (x, y), size (w, h)."""

    __slots__ = ("x", "y", "w", "h")

    def __init__(self, x: float, y: float, w: float, h: float):
        self.x, self.y, self.w, self.h = x, y, w, h

    def hits(self, other: "_Box", clear: float = _CLEAR) -> bool:
        return (abs(self.x - other.x) * 2 < self.w + other.w + 2 * clear
                and abs(self.y - other.y) * 2 < self.h + other.h + 2 * clear)

    def border(self, toward: "_Box", gap: float = 0.02) -> tuple[float, float]:
        """Where the line from this box's centre to `toward`'s centre leaves this box."""
        dx, dy = toward.x - self.x, toward.y - self.y
        scale = min((self.w / 2 + gap) / abs(dx) if dx else float("inf"),
                    (self.h / 2 + gap) / abs(dy) if dy else float("inf"))
        return (self.x + dx * scale, self.y + dy * scale) if scale < 1 else (self.x, self.y)


def _measure(fig: Figure, texts: list) -> list[tuple[float, float]]:
    """(width, height) in inches of each text's box (its bbox patch: text plus padding)."""
    renderer = fig.canvas.get_renderer()
    sizes = []
    for text in texts:
        text.update_bbox_position_size(renderer)
        patch = text.get_bbox_patch()
        box = patch.get_window_extent(renderer) if patch is not None else text.get_window_extent(renderer)
        sizes.append((box.width / fig.dpi, box.height / fig.dpi))
    return sizes


def _ordered_positions(wanted: list[float], steps: list[float]) -> list[float]:
    """Heights closest (least squares) to `wanted`, keeping the order top to bottom with node i
    at least steps[i] below node i-1: isotonic regression (pool adjacent violators) on
    wanted[i] + (steps[1] + ... + steps[i])."""
    offsets, total = [], 0.0
    for step in steps:
        total += step
        offsets.append(total)
    blocks: list[list[float]] = []  # [sum, count]
    for w, offset in zip(wanted, offsets):
        blocks.append([w + offset, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    levels = [b[0] / b[1] for b in blocks for _ in range(b[1])]
    return [q - offset for q, offset in zip(levels, offsets)]


def _rows(layout: nx.DiGraph, columns: list[list], pitch: float, extra: dict) -> dict:
    """Height of each node: columns stacked in order (`pitch` apart, plus `extra` space above a
    node), each node drawn towards its parents (left to right), then towards its children (right
    to left), so arrows stay short and flat."""
    y: dict = {}
    steps = {id(col): [0.0] + [pitch + extra.get(n, 0.0) for n in col[1:]] for col in columns}
    for col in columns:
        wanted = []
        for i, n in enumerate(col):
            parents = [y[p] for p in layout.predecessors(n) if p in y]
            wanted.append(sum(parents) / len(parents) if parents else ((len(col) - 1) / 2 - i) * pitch)
        y.update(zip(col, _ordered_positions(wanted, steps[id(col)])))
    for col in reversed(columns[:-1]):
        wanted = []
        for n in col:
            children = [y[c] for c in layout.successors(n)]
            wanted.append(sum(children) / len(children) if children else y[n])
        y.update(zip(col, _ordered_positions(wanted, steps[id(col)])))
    return y


def _along(points: list[tuple[float, float]], t: float) -> tuple[float, float]:
    """The point at fraction `t` of the length of a polyline."""
    lengths = [((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 for (x0, y0), (x1, y1) in zip(points, points[1:])]
    goal = t * sum(lengths)
    for (x0, y0), (x1, y1), length in zip(points, points[1:], lengths):
        if goal <= length and length > 0:
            f = goal / length
            return x0 + f * (x1 - x0), y0 + f * (y1 - y0)
        goal -= length
    return points[-1]


def _arrow_points(boxes: dict, path: list) -> list[tuple[float, float]]:
    """The polyline of one arrow: from the first box's border, through the waypoints, to the last
    box's border."""
    first, last = boxes[path[0]], boxes[path[-1]]
    inner = [(boxes[n].x, boxes[n].y) for n in path[1:-1]]
    return [first.border(boxes[path[1]]), *inner, last.border(boxes[path[-2]])]


def _place(graph, layout, columns, node_size, paths, labelled, key_size, extra, gaps):
    """Boxes (inches, origin bottom-left) of the nodes and waypoints and of the keys, for one
    spacing (`extra` space above some nodes, `gaps` after each column); a key that found no free
    spot maps to None. Returns (boxes, keys, width, height)."""
    col_w = [max((node_size[n][0] for n in col), default=0.0) for col in columns]
    pitch = max((h for _, h in node_size.values()), default=0.3) + _ROW_GAP
    y = _rows(layout, columns, pitch, extra)
    half = max(node_size[n][1] for n in layout) / 2
    top, bottom = max(y.values()) + half, min(y.values()) - half
    boxes, x = {}, _MARGIN
    for c, col in enumerate(columns):
        x += col_w[c] / 2
        for n in col:
            boxes[n] = _Box(x, y[n] - bottom + _MARGIN, *node_size[n])
        x += col_w[c] / 2 + (gaps[c] if c < len(gaps) else 0.0)
    obstacles = [boxes[n] for n in graph]
    for path in paths.values():  # arrowheads stay visible
        tip = _arrow_points(boxes, path)[-1]
        obstacles.append(_Box(tip[0], tip[1], 0.14, 0.14))
    keys = {}
    for edge in labelled:
        points, (w, h) = _arrow_points(boxes, paths[edge]), key_size[edge]
        keys[edge] = None
        for t in _SPOTS:
            box = _Box(*_along(points, t), w, h)
            if not any(box.hits(other) for other in obstacles):
                keys[edge] = box
                obstacles.append(box)
                break
    return boxes, keys, x + _MARGIN, top - bottom + 2 * _MARGIN


def _gaps(columns, layer, labelled, key_size) -> list[float]:
    """Width of the gap after each column: room for the widest key whose arrow crosses it."""
    gaps = []
    for c in range(len(columns) - 1):
        crossing = [key_size[e][0] for e in labelled if layer[e[0]] <= c < layer[e[1]]]
        gaps.append(min(max(max(crossing) + 0.3, _KEY_GAP[0]), _KEY_GAP[1]) if crossing else _PLAIN_GAP)
    return gaps


def plot_topology(graph: TopologyGraph, title: str | None = None) -> Figure:
    """Draw the graph: boxes coloured by exchange type, binding keys on the arrows.

    At most MAX_WIDTH_PX wide (it grows in height instead), no text smaller than LABEL_FONT
    points, and no two texts overlap (see the layout rule above).
    """
    fig = new_figure(6.0, 3.0)
    fig.set_layout_engine("none")
    FigureCanvasAgg(fig)  # a renderer to measure texts with (the figure still prints anywhere)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    heading = title or f"Topologia do vhost {graph.graph.get('vhost', '')}"
    if graph.number_of_nodes() == 0:
        ax.text(0.5, 0.4, "(vhost vazio: nenhuma exchange ou fila)", ha="center", va="center",
                fontsize=NODE_FONT, transform=ax.transAxes)
        ax.text(0.5, 0.9, heading, ha="center", va="top", fontsize=TITLE_FONT, transform=ax.transAxes)
        return fig
    layout, layer, paths = _with_waypoints(graph)
    columns = _columns(layout, layer)
    row = {n: i for col in columns for i, n in enumerate(col)}
    labelled = sorted((e for e in graph.edges if graph.edges[e].get("label")),
                      key=lambda e: (layer[e[0]], row[e[0]], row[e[1]]))
    # Jupyter prints the figure with bbox_inches="tight", which adds savefig.pad_inches on each side
    max_width = MAX_WIDTH_PX / fig.dpi - 2 * float(rcParams["savefig.pad_inches"])
    node_texts = {n: ax.text(0, 0, "", ha="center", va="center", fontsize=NODE_FONT, zorder=3,
                             bbox=_node_style(graph.nodes[n])) for n in graph}
    key_texts = {e: ax.text(0, 0, "", ha="center", va="center", fontsize=LABEL_FONT, zorder=5,
                            color="#222222", linespacing=1.1,
                            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.9))
                 for e in labelled}
    waypoint_size = (0.0, 0.2)
    # The roomiest drawing that fits the width and gives every key a free spot on its arrow: at
    # each level (narrower keys, then compact queue boxes) the gaps crossed by a key without a spot
    # widen while the width allows. When no level is enough, the roomiest level that fits the
    # width is kept and rows move apart, around the arrows whose keys found no spot.
    def attempt(compact: bool, wrap: int):
        for n, text in node_texts.items():
            text.set_text(_node_text(graph.nodes[n], compact))
        for e, text in key_texts.items():
            text.set_text(_key_text(graph.edges[e]["label"], wrap))
        node_size = dict(zip(node_texts, _measure(fig, list(node_texts.values()))))
        node_size.update({n: waypoint_size for n in layout if n not in graph})
        key_size = dict(zip(key_texts, _measure(fig, list(key_texts.values()))))
        gaps = _gaps(columns, layer, labelled, key_size)
        for _ in range(8):
            placed = _place(graph, layout, columns, node_size, paths, labelled, key_size, {}, gaps)
            crossed = {c for e, box in placed[1].items() if box is None for c in range(layer[e[0]], layer[e[1]])}
            room = max_width - placed[2]
            if not crossed or room <= 0.05:
                break
            grow = min(room / len(crossed), 0.5)
            gaps = [g + grow if c in crossed else g for c, g in enumerate(gaps)]
        return node_size, key_size, gaps, placed

    levels = ((False, 22), (False, 16), (True, 16), (True, 10))
    fitting = None
    for level in levels:
        node_size, key_size, gaps, (boxes, keys, width, height) = attempt(*level)
        if width <= max_width:
            if all(keys.values()):
                break
            fitting = fitting or level
    else:
        if fitting and fitting != levels[-1]:
            node_size, key_size, gaps, (boxes, keys, width, height) = attempt(*fitting)
    extra: dict = {}
    for _ in range(16):
        if all(keys.values()):
            break
        for (u, v), box in keys.items():
            if box is None:  # more room above and below the arrow's end
                col = columns[layer[v]]
                below = col[col.index(v) + 1:col.index(v) + 2]
                for n in [v, *below]:
                    extra[n] = extra.get(n, 0.0) + 0.12
        boxes, keys, width, height = _place(graph, layout, columns, node_size, paths, labelled,
                                            key_size, extra, gaps)
    height += 0.45  # the title
    fig.set_size_inches(width, height)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    for n in graph:
        node_texts[n].set_position((boxes[n].x, boxes[n].y))
    for (u, v), path in paths.items():
        ax.add_patch(FancyArrowPatch(path=Path(_arrow_points(boxes, path)), arrowstyle="-|>",
                                     mutation_scale=12, lw=1.1, color="#444444", zorder=2,
                                     ls="--" if graph.nodes[u].get("generic", False) else "-"))
    for e, box in keys.items():
        point = (box.x, box.y) if box else _along(_arrow_points(boxes, paths[e]), 0.5)
        key_texts[e].set_position(point)  # no free spot even with the rows spread: mid-arrow
    ax.text(width / 2, height - 0.12, heading, ha="center", va="top", fontsize=TITLE_FONT)
    return fig


def show_topology(curso, **options) -> TopologyGraph:
    """Read the vhost's topology, draw it (shown in a notebook) and return the graph.

    Options are those of `topology_graph` (show_default, show_internal, producers, consumers).
    """
    graph = topology_graph(curso, **options)
    display_figure(plot_topology(graph))
    return graph


def show_topology_part(curso, exchanges, queues, producer: str | None = GENERIC_PRODUCER,
                       title: str | None = None) -> TopologyGraph:
    """Draw only some exchanges and queues of the vhost (it may hold others), with one producer
    publishing to those exchanges (None: no producer); show it in a notebook and return that part."""
    exchanges, queues = list(exchanges), list(queues)
    graph = topology_graph(curso, producers={producer: exchanges} if producer else False, consumers=False)
    keep = ({("exchange", e) for e in exchanges} | {("queue", q) for q in queues}
            | ({("producer", producer)} if producer else set()))
    part = graph.subgraph(n for n in graph.nodes if n in keep).copy()
    display_figure(plot_topology(part, title=title))
    return part
