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
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from ._toolkit import (CLIENT_COLOR, EXCHANGE_COLORS, QUEUE_COLOR, display_figure, format_headers,
                       new_figure, ready_and_consumers)

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
    label = f"{title}\n{ready} prontas · {unacked} sem ack"
    if consumers:
        label += f"\n{consumers} consumidor" + ("es" if consumers > 1 else "")
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
        who = names.get(details.get("connection_name"), details.get("connection_name", "?"))
        name = f"{who} (canal {details.get('number', '?')})"
        graph.add_node(("consumer", name), kind="consumer", name=name, label=name,
                       consumer_tag=c.get("consumer_tag"), prefetch=c.get("prefetch_count"))
        graph.add_edge(queue, ("consumer", name), keys=[], arguments=[], label="")


# drawing ----------------------------------------------------------------------------------
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


def _ordered_layout(graph: TopologyGraph) -> dict:
    """networkx multipartite layout, each column ordered by its parents' mean height
    (barycenter heuristic: fewer crossing edges)."""
    layer = _layers(graph)
    height: dict = {}
    columns: dict[int, list] = {}
    for column in sorted(set(layer.values())):
        members = [n for n in graph if layer[n] == column]
        members.sort(key=lambda n: (_barycenter(graph, n, height), n))
        for i, n in enumerate(members):
            height[n] = i - (len(members) - 1) / 2
        columns[column] = members
    pos = nx.multipartite_layout(graph, subset_key=columns, align="vertical")
    # multipartite_layout stacks a column bottom-up; flip it so the first node is on top
    return {n: (x, -y) for n, (x, y) in pos.items()}


def _barycenter(graph: TopologyGraph, node, height: dict) -> float:
    placed = [height[p] for p in graph.predecessors(node) if p in height]
    return sum(placed) / len(placed) if placed else float("inf")


def _node_style(data: dict) -> dict:
    kind = data["kind"]
    if kind == "exchange":
        return dict(boxstyle="round,pad=0.4", fc=EXCHANGE_COLORS.get(data["type"], "#BBBBBB"), ec="#333333")
    if kind == "queue":
        return dict(boxstyle="square,pad=0.4", fc=QUEUE_COLOR, ec="#333333")
    return dict(boxstyle="round4,pad=0.35", fc=CLIENT_COLOR, ec="#777777",
                ls="--" if data.get("generic") else "-")


def plot_topology(graph: TopologyGraph, title: str | None = None) -> Figure:
    """Draw the graph: boxes coloured by exchange type, binding keys on the edges."""
    pos = _ordered_layout(graph)
    columns = len({round(x, 6) for x, _ in pos.values()}) or 1
    tallest = max((sum(1 for p in pos.values() if abs(p[0] - x) < 1e-6) for x, _ in pos.values()), default=1)
    fig = new_figure(max(6.0, 3.4 * columns), max(3.0, 0.8 * tallest + 1.0))
    ax = fig.add_subplot()
    ax.set_axis_off()
    texts = {}
    for n, (x, y) in pos.items():
        data = graph.nodes[n]
        texts[n] = ax.text(x, y, data["label"], ha="center", va="center", fontsize=9, zorder=3,
                           bbox=_node_style(data))
    for u, v, data in graph.edges(data=True):
        dashed = graph.nodes[u].get("generic", False)
        ax.add_patch(FancyArrowPatch(pos[u], pos[v], patchA=texts[u].get_bbox_patch(),
                                     patchB=texts[v].get_bbox_patch(), arrowstyle="-|>",
                                     mutation_scale=12, lw=1.1, color="#444444", zorder=4,
                                     ls="--" if dashed else "-", shrinkA=1, shrinkB=1))
        if data.get("label"):
            (x0, y0), (x1, y1) = pos[u], pos[v]
            ax.text(x0 + 0.5 * (x1 - x0), y0 + 0.5 * (y1 - y0), data["label"], fontsize=8,
                    ha="center", va="center", zorder=5, color="#222222",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85))
    ax.set_xlim(*_limits([p[0] for p in pos.values()], 0.6))
    ax.set_ylim(*_limits([p[1] for p in pos.values()], 0.6))
    if not pos:
        ax.text(0, 0, "(vhost vazio: nenhuma exchange ou fila)", ha="center", va="center")
    ax.set_title(title or f"Topologia do vhost {graph.graph.get('vhost', '')}", fontsize=11)
    return fig


def _limits(values: list[float], pad: float) -> tuple[float, float]:
    """Axis limits leaving `pad` times the smallest gap between distinct positions."""
    distinct = sorted({round(v, 6) for v in values}) or [0.0]
    gaps = [b - a for a, b in zip(distinct, distinct[1:])]
    margin = pad * (min(gaps) if gaps else 1.0)
    return distinct[0] - margin, distinct[-1] + margin


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
