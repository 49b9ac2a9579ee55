"""Routing playground: pick an exchange type, bind queues, publish, and see where it lands.

    from course_utils.widgets import routing_playground
    routing_playground(curso)          # the widget (last line of a cell)

Everything happens on the real broker: the playground declares a durable exchange
`parquinho.<type>`, durable queues with the bindings typed in the box, and publishes through
`routing_table`. `play_routing(...)` is the same logic without widgets (tests call it).

The playground only ever touches names of its own: a queue typed as `kern` is the broker's
`parquinho.kern` (tables and pictures show the typed name), so a learner's own `kern` is never
bound, probed or deleted. "Limpar" deletes what that playground declared, and says what it
deleted (nothing is said when there was nothing to delete).

Bindings box, one queue per line:
    direct / topic:  `fila_a: chave1, chave2`   (topic keys may use * and #)
    fanout:          `fila_a`                    (keys do not matter)
    headers:         `fila_a: x-match=any, cor=azul, tam=g`   (one binding per line)
Message box: a routing key (`kern.critical`) or, for headers, `cor=azul, tam=g`.
"""
from __future__ import annotations

import pandas as pd
import pika.exceptions

from ._toolkit import display_figure, open_channel
from .errors import CourseError
from .routing import as_message, plot_routing, routing_table

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
PREFIX = "parquinho."  # every exchange and queue the playground declares is named PREFIX + ...
# Examples in the boxes; their names are not the chapters' own queues (chapter 3 has kern, erros...).
PLACEHOLDERS = {
    "direct": "falhas: error, critical\nalertas: warning",
    "fanout": "painel\nhistorico",
    "topic": "nucleo: kern.*\ngraves: *.critical\ngeral: #",
    "headers": "azul_e_g: x-match=all, cor=azul, tam=g\nazul_ou_g: x-match=any, cor=azul, tam=g",
}
MESSAGE_PLACEHOLDERS = {"direct": "error", "fanout": "(qualquer)", "topic": "kern.critical",
                        "headers": "cor=azul, tam=g"}


def playground_exchange(exchange_type: str) -> str:
    return f"{PREFIX}{exchange_type}"


def playground_queue(name: str) -> str:
    """The broker's name of the playground queue typed as `name` (`kern` -> `parquinho.kern`)."""
    return name if name.startswith(PREFIX) else f"{PREFIX}{name}"


def _pairs(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CourseError(f"Não entendi {item!r}: escreva cabeçalhos como nome=valor, separados por vírgula.")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_bindings(text: str, exchange_type: str) -> dict[str, list]:
    """The bindings box as {queue: [binding key, ...]} or, for headers, {queue: [{args}, ...]}."""
    if exchange_type not in EXCHANGE_TYPES:
        raise CourseError(f"Tipo de exchange desconhecido: {exchange_type!r}. Use um de {EXCHANGE_TYPES}.")
    bindings: dict[str, list] = {}
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        queue, _, rest = (part.strip() for part in line.partition(":"))
        if not queue:
            raise CourseError(f"Falta o nome da fila na linha {line!r} (formato: fila: binding).")
        if exchange_type == "headers":
            args = _pairs(rest)
            args.setdefault("x-match", "all")
            if args["x-match"] not in ("all", "any"):
                raise CourseError("x-match deve ser all ou any.")
            bindings.setdefault(queue, []).append(args)
        elif exchange_type == "fanout":
            bindings.setdefault(queue, [""])
        else:
            keys = [k.strip() for k in rest.split(",") if k.strip()] or [""]
            bindings.setdefault(queue, []).extend(keys)
    if not bindings:
        raise CourseError("Declare ao menos uma fila no quadro de bindings.")
    return bindings


def parse_message(text: str, exchange_type: str) -> str | dict:
    """The message box as a routing key, or a header dict for a headers exchange."""
    return _pairs(text) if exchange_type == "headers" else text.strip()


def _apply_bindings(channel, exchange: str, exchange_type: str, bindings: dict[str, list],
                    existing: list[dict]) -> None:
    """Declare the exchange and queues and make the exchange's bindings exactly `bindings`
    (whose keys are broker queue names)."""
    channel.exchange_declare(exchange=exchange, exchange_type=exchange_type, durable=True)
    wanted = set()
    for queue, items in bindings.items():
        channel.queue_declare(queue=queue, durable=True)
        for item in items:
            key, args = ("", item) if isinstance(item, dict) else (item, None)
            channel.queue_bind(queue=queue, exchange=exchange, routing_key=key, arguments=args)
            wanted.add((queue, key, tuple(sorted((args or {}).items()))))
    for b in existing:
        args = b.get("arguments") or {}
        if (b["destination"], b["routing_key"], tuple(sorted(args.items()))) not in wanted:
            channel.queue_unbind(queue=b["destination"], exchange=exchange,
                                 routing_key=b["routing_key"], arguments=args or None)


def play_routing(curso, exchange_type: str, bindings: dict[str, list], message: str | dict,
                 exchange: str | None = None) -> pd.Series:
    """Set up `exchange` (default parquinho.<type>) with exactly `bindings`, publish `message`
    and return a boolean Series queue -> whether the message landed there.

    The queues are the playground's own: `bindings` names them as typed (`kern`), the broker has
    `parquinho.kern`; the Series (and its heat-map) use the typed names."""
    exchange = exchange or playground_exchange(exchange_type)
    broker_names = {playground_queue(q): q for q in bindings}
    try:
        # only the playground's own queues are ever unbound (even from an `exchange` of the learner's)
        existing = [b for b in curso.management.bindings()
                    if b["source"] == exchange and b["destination_type"] == "queue"
                    and b["destination"].startswith(PREFIX)]
        with open_channel(curso) as channel:
            _apply_bindings(channel, exchange, exchange_type,
                            {playground_queue(q): items for q, items in bindings.items()}, existing)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise CourseError(f"O broker recusou a configuração: {exc.reply_text}. (Uma fila com esse nome "
                          "já existe com outros argumentos? Escolha outro nome.)") from exc
    table = routing_table(curso, exchange, [message], queues=list(broker_names), show=False)
    row = table.iloc[0].rename(as_message(message)[0]).rename(index=broker_names)
    row.index.name = table.columns.name
    row.attrs = dict(table.attrs, broker_queues=dict(broker_names),
                     bindings={broker_names.get(q, q): text
                               for q, text in (table.attrs.get("bindings") or {}).items()})
    return row


def _exists(connection, kind: str, name: str) -> bool:
    """Whether the exchange or queue `name` exists (passive declare on a channel of its own)."""
    channel = connection.channel()
    try:
        if kind == "exchange":
            channel.exchange_declare(exchange=name, passive=True)
        else:
            channel.queue_declare(queue=name, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    channel.close()
    return True


def cleanup_playground(curso, exchange_type: str, queues: list[str] = ()) -> list[str]:
    """Delete the playground's exchange `parquinho.<type>` and its queues for the typed names
    `queues` (`kern` deletes `parquinho.kern`, never `kern`). Returns what was deleted
    ("exchange parquinho.topic", "fila parquinho.kern"), leaving out what did not exist."""
    targets = [("exchange", playground_exchange(exchange_type))]
    targets += [("fila", playground_queue(q)) for q in dict.fromkeys(queues)]
    deleted = []
    with open_channel(curso) as channel:
        for kind, name in targets:
            if not _exists(channel.connection, kind, name):
                continue
            if kind == "exchange":
                channel.exchange_delete(exchange=name)
            else:
                channel.queue_delete(queue=name)
            deleted.append(f"{kind} {name}")
    return deleted


class RoutingPlayground:
    """The widget. Its parts are attributes, so tests and notebooks can drive it."""

    def __init__(self, curso):
        import ipywidgets as w

        self.curso = curso
        self.history = pd.DataFrame()
        self._declared: dict[str, set] = {}
        self.type_picker = w.Dropdown(options=EXCHANGE_TYPES, value="direct", description="Exchange:")
        self.bindings_box = w.Textarea(placeholder=PLACEHOLDERS["direct"], description="Bindings:",
                                       layout=w.Layout(width="480px", height="110px"))
        self.message_box = w.Text(placeholder=MESSAGE_PLACEHOLDERS["direct"], description="Mensagem:",
                                  layout=w.Layout(width="480px"))
        self.publish_button = w.Button(description="Publicar", button_style="primary", icon="paper-plane")
        self.clear_button = w.Button(description="Limpar", icon="trash")
        self.output = w.Output()
        self.type_picker.observe(self._on_type, names="value")
        self.bindings_box.observe(lambda _change: self._reset_history(), names="value")
        self.publish_button.on_click(lambda _b: self.publish())
        self.clear_button.on_click(lambda _b: self._on_clear_click())
        self.widget = w.VBox([self.type_picker, self.bindings_box, self.message_box,
                              w.HBox([self.publish_button, self.clear_button]), self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _on_type(self, change) -> None:
        self.bindings_box.placeholder = PLACEHOLDERS[change["new"]]
        self.message_box.placeholder = MESSAGE_PLACEHOLDERS[change["new"]]
        self._reset_history()

    def _reset_history(self) -> None:
        self.history = pd.DataFrame()

    def publish(self) -> pd.Series | None:
        """What the Publicar button does; returns the row (None and a pt-BR message on errors)."""
        kind = self.type_picker.value
        self.output.clear_output(wait=True)
        with self.output:
            try:
                bindings = parse_bindings(self.bindings_box.value or self.bindings_box.placeholder, kind)
                message = parse_message(self.message_box.value, kind)
                self._declared.setdefault(kind, set()).update(bindings)  # even if it fails midway
                row = play_routing(self.curso, kind, bindings, message)
            except CourseError as exc:
                print(f"⚠ {exc}")
                return None
            new = row.to_frame().T
            self.history = new if self.history.empty else pd.concat([self.history, new])
            self.history = self.history.astype("boolean").fillna(False).astype(bool)
            self.history.index.name, self.history.columns.name = "mensagem", "fila"
            self.history.attrs.update(row.attrs)
            got = [q for q, hit in row.items() if hit]
            print(f"{row.name!r} → " + (", ".join(got) if got else "nenhuma fila (descartada)"))
            print(f"(no broker: exchange {playground_exchange(kind)}, filas "
                  f"{', '.join(row.attrs['broker_queues'])}; o parquinho não mexe nas suas filas)")
            display_figure(plot_routing(self.history))
        return row

    def clear(self) -> list[str]:
        """Delete the exchanges and queues this playground declared, and only those; returns
        what was deleted. Says so in the widget only when it deleted something."""
        deleted = []
        for kind, queues in self._declared.items():
            deleted += cleanup_playground(self.curso, kind, sorted(queues))
        self._declared.clear()
        self._reset_history()
        self.output.clear_output()
        if deleted:
            with self.output:
                print("Apagado pelo parquinho: " + ", ".join(deleted) + ".")
        return deleted

    def _on_clear_click(self) -> None:
        """The Limpar button: clear(), and an answer to the click when there was nothing to delete."""
        if not self.clear():
            with self.output:
                print("Nada a apagar: este parquinho não criou nada desde a última limpeza.")


def routing_playground(curso) -> RoutingPlayground:
    """The routing playground widget for the chapter's vhost (see the module docstring)."""
    return RoutingPlayground(curso)
