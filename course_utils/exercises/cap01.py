"""Checks for chapter 1 (Mensageria e RabbitMQ). Statements: solutions/01_mensageria.ipynb.

Every exercise is about the AMQP model (exchanges, bindings, queues), so `run` rebuilds the
exercise's broker objects from nothing before calling the learner's function, and `verify` reads
the result from the broker: exchanges, queues and bindings from the management API (1.1), queue
contents and the exchange each message was published to (1.2; the management API's per-exchange
publish counters are not used: they can outlive a deleted exchange for a while and be credited to a
new one of the same name), and where the check's own probe messages land (1.3, `routing_table`:
publisher confirms + exact ready counts; the probes are taken out again).
"""
from __future__ import annotations

import contextlib

import pika
import pika.exceptions

from ..errors import CourseError
from ..management import ManagementError
from .checks import CheckContext, Exercise, close_quietly, expect


@contextlib.contextmanager
def _learner_channel(ctx: CheckContext, what: str):
    """A fresh connection and channel for the learner's function; broker errors become hints."""
    connection = ctx.curso.connect()
    try:
        yield connection.channel()
    except CourseError as exc:  # strict mode (RabbitMQ 4.x) and other course errors
        raise AssertionError(f"{what} falhou: {exc}") from None
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise AssertionError(f"O broker fechou o canal durante {what}: {exc.reply_code} "
                             f"{exc.reply_text}. Confira nomes e tipos nas declarações.") from None
    except pika.exceptions.AMQPError as exc:
        raise AssertionError(f"{what} falhou com {exc.__class__.__name__}: {exc}") from None
    finally:
        close_quietly(connection)


def _exchange(ctx: CheckContext, name: str) -> dict | None:
    try:
        return ctx.management.exchange(name)
    except ManagementError as exc:
        if exc.status == 404:
            return None
        raise


def _bindings_from(ctx: CheckContext, exchange: str) -> set[tuple[str, str]]:
    """{(queue, binding key)} of the bindings from `exchange` to queues."""
    return {(b["destination"], b["routing_key"]) for b in ctx.management.bindings()
            if b["source"] == exchange and b["destination_type"] == "queue"}


def _describe(bindings) -> str:
    return ", ".join(f"{q} ← '{k}'" for q, k in sorted(bindings)) or "nenhum"


def _expect_durable_queues(ctx: CheckContext, queues, where: str) -> None:
    for name in queues:
        q = ctx.queue(name)
        expect(q is not None, f"A fila '{name}' não existe no broker. Declare-a em {where} com "
                              f"channel.queue_declare(queue='{name}', durable=True).")
        expect(q.get("durable") and not q.get("exclusive") and not q.get("auto_delete"),
               f"A fila '{name}' existe, mas não é uma fila durável comum (durable={q.get('durable')}, "
               f"exclusive={q.get('exclusive')}, auto_delete={q.get('auto_delete')}). Declare-a só com "
               f"durable=True.")


def _reset(ctx: CheckContext, exchanges, queues) -> None:
    """Delete the exercise's exchanges and queues (whatever an earlier try left)."""
    with ctx.curso.connect() as connection:
        channel = connection.channel()
        for name in queues:
            channel.queue_delete(queue=name)
        for name in exchanges:
            channel.exchange_delete(exchange=name)


# --- 1.1 -----------------------------------------------------------------------------------

class MontarNotificacoes(Exercise):
    id = "1.1"
    title = "A exchange, as filas e os bindings no broker são os descritos."
    points = 2
    exchange = "notificacoes"
    exchange_type = "direct"
    queues = ["email", "sms", "push"]
    bindings = {("email", "cadastro"), ("email", "pedido"), ("sms", "pedido"), ("sms", "senha"),
                ("push", "promocao")}

    def run(self, ctx: CheckContext) -> None:
        _reset(ctx, [self.exchange], self.queues)
        with _learner_channel(ctx, "montar_notificacoes(channel)") as channel:
            ctx.call("montar_notificacoes", channel)

    def verify(self, ctx: CheckContext) -> None:
        ex = _exchange(ctx, self.exchange)
        expect(ex is not None, f"A exchange '{self.exchange}' não existe no broker. Declare-a com "
                               f"channel.exchange_declare(exchange='{self.exchange}', "
                               f"exchange_type='{self.exchange_type}', durable=True).")
        expect(ex["type"] == self.exchange_type,
               f"A exchange '{self.exchange}' é do tipo '{ex['type']}'; o enunciado pede "
               f"'{self.exchange_type}' (cada evento vai só para as filas ligadas com aquela chave).")
        expect(ex.get("durable"), f"A exchange '{self.exchange}' não é durável: declare-a com durable=True.")
        _expect_durable_queues(ctx, self.queues, "montar_notificacoes()")
        found = _bindings_from(ctx, self.exchange)
        missing, extra = self.bindings - found, found - self.bindings
        expect(not missing and not extra,
               f"Os bindings da exchange '{self.exchange}' não são os pedidos. "
               f"Faltam: {_describe(missing)}. Sobram: {_describe(extra)}. Use "
               f"channel.queue_bind(queue=FILA, exchange='{self.exchange}', routing_key=CHAVE), "
               f"uma vez para cada par fila ← chave.")


# --- 1.2 -----------------------------------------------------------------------------------

# Exercise 1.2's topology: a direct exchange for order events and a fanout one for notices.
RESTAURANTE = {
    "exchanges": {"pedidos": "direct", "avisos": "fanout"},
    "queues": ["cozinha", "financeiro", "entrega", "app_cliente"],
    "bindings": [("pedidos", "cozinha", "novo"), ("pedidos", "financeiro", "novo"),
                 ("pedidos", "financeiro", "cancelado"), ("pedidos", "entrega", "pronto"),
                 ("avisos", "entrega", ""), ("avisos", "app_cliente", "")],
}


def montar_restaurante(curso) -> None:
    """Declare exercise 1.2's topology from nothing (deleting what an earlier try left)."""
    with curso.connect() as connection:
        channel = connection.channel()
        for name in RESTAURANTE["queues"]:
            channel.queue_delete(queue=name)
        for name, kind in RESTAURANTE["exchanges"].items():
            channel.exchange_delete(exchange=name)
            channel.exchange_declare(exchange=name, exchange_type=kind, durable=True)
        for name in RESTAURANTE["queues"]:
            channel.queue_declare(queue=name, durable=True)
        for exchange, queue, key in RESTAURANTE["bindings"]:
            channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)


def mostrar_restaurante(curso):
    """Build exercise 1.2's topology and draw only it (the vhost may hold other exercises')."""
    from .._toolkit import display_figure
    from ..topology import plot_topology, topology_graph

    montar_restaurante(curso)
    graph = topology_graph(curso, producers={"produtor": list(RESTAURANTE["exchanges"])}, consumers=False)
    keep = ({("exchange", e) for e in RESTAURANTE["exchanges"]}
            | {("queue", q) for q in RESTAURANTE["queues"]} | {("producer", "produtor")})
    part = graph.subgraph(keep).copy()
    display_figure(plot_topology(part, title="Exercício 1.2: a topologia do restaurante"))
    return part


class Avisar(Exercise):
    id = "1.2"
    title = "Cada mensagem entrou pela exchange certa e chegou só às filas certas."
    points = 2
    novo = "pedido 7: novo"
    saiu = "pedido 7: saiu para entrega"
    # queue -> the (body, exchange it was published to) it must hold, and nothing else
    expected = {"cozinha": [(novo, "pedidos")], "financeiro": [(novo, "pedidos")],
                "entrega": [(saiu, "avisos")], "app_cliente": [(saiu, "avisos")]}

    def run(self, ctx: CheckContext) -> None:
        montar_restaurante(ctx.curso)
        with _learner_channel(ctx, "avisar(channel)") as channel:
            ctx.call("avisar", channel)

    def verify(self, ctx: CheckContext) -> None:
        for exchange, kind in RESTAURANTE["exchanges"].items():
            ex = _exchange(ctx, exchange)
            expect(ex is not None and ex["type"] == kind,
                   f"A exchange '{exchange}' sumiu ou mudou de tipo. avisar() não deve mudar a "
                   f"topologia, só publicar.")
            wanted = {(q, k) for e, q, k in RESTAURANTE["bindings"] if e == exchange}
            found = _bindings_from(ctx, exchange)
            expect(found == wanted,
                   f"Os bindings da exchange '{exchange}' mudaram (agora: {_describe(found)}). O exercício "
                   f"é usar a topologia como ela está: avisar() só deve publicar.")
        for queue in self.expected:
            expect(ctx.queue(queue) is not None, f"A fila '{queue}' sumiu: avisar() só deve publicar.")
        # The messages in each queue, read through the management API (each read puts them back).
        # A message remembers the exchange it was published to, so copies published straight into
        # each queue through the default exchange "" show up as such.
        contents = ctx.eventually(
            lambda: {q: sorted((m.get("payload", ""), m.get("exchange", ""))
                               for m in ctx.management.peek(q, 10)) for q in self.expected},
            lambda got: all(len(got[q]) >= len(b) for q, b in self.expected.items()))
        for queue, wanted in self.expected.items():
            bodies = [body for body, _ in contents[queue]]
            want_bodies = [body for body, _ in wanted]
            expect(bodies == want_bodies,
                   f"A fila '{queue}' tem {bodies!r}; deveria ter {want_bodies!r}. {self._hint(queue)}")
        for queue, wanted in self.expected.items():
            for (body, exchange), (_, want_exchange) in zip(contents[queue], wanted):
                where = (f"na exchange '{exchange}'" if exchange else
                         "pela exchange padrão \"\", direto na fila")
                expect(exchange == want_exchange,
                       f"A mensagem {body!r} chegou à fila '{queue}', mas foi publicada {where}. Publique "
                       f"cada mensagem uma vez só, na exchange cujos bindings já a levam às filas certas: "
                       f"o produtor deste sistema só conhece as exchanges, não as filas.")

    def _hint(self, queue: str) -> str:
        if queue in ("cozinha", "financeiro"):
            return (f"Que exchange e que routing key levam '{self.novo}' à cozinha E ao financeiro, e a "
                    f"nenhuma outra fila? Olhe as chaves nas setas do desenho.")
        return (f"Que exchange leva '{self.saiu}' à entrega E ao app_cliente com uma publicação só? Olhe "
                f"as setas que saem de cada exchange no desenho.")


# --- 1.3 -----------------------------------------------------------------------------------

class MontarAlertas(Exercise):
    id = "1.3"
    title = "Cada alerta chega só às filas que o querem."
    points = 3
    exchange = "alertas"
    queues = ["painel", "plantao", "relatorio"]
    severities = ["info", "aviso", "critico"]
    wants = {"painel": {"info", "aviso", "critico"}, "plantao": {"critico"},
             "relatorio": {"aviso", "critico"}}

    def run(self, ctx: CheckContext) -> None:
        _reset(ctx, [self.exchange], self.queues)
        with _learner_channel(ctx, "montar_alertas(channel)") as channel:
            ctx.call("montar_alertas", channel)

    def verify(self, ctx: CheckContext) -> None:
        from ..routing import routing_table

        expect(_exchange(ctx, self.exchange) is not None,
               f"A exchange '{self.exchange}' não existe no broker: declare-a em montar_alertas() com "
               f"channel.exchange_declare(exchange='{self.exchange}', exchange_type=..., durable=True). "
               f"O tipo é a sua escolha.")
        _expect_durable_queues(ctx, self.queues, "montar_alertas()")
        for name in self.queues:
            q = ctx.queue(name)
            expect(not q.get("consumers"), f"A fila '{name}' tem consumidor: montar_alertas() só deve "
                                           f"declarar, sem consumir (o consumidor levaria os alertas de teste).")
        # The check publishes one probe alert per severity and reads where each one landed.
        try:
            table = routing_table(ctx.curso, self.exchange, self.severities, queues=self.queues, show=False)
        except CourseError as exc:
            raise AssertionError(f"Não consegui publicar os alertas de teste: {exc}") from None
        kind = table.attrs.get("exchange_type")
        for severity in self.severities:
            landed = {q for q in self.queues if table.at[severity, q]}
            wanted = {q for q in self.queues if severity in self.wants[q]}
            expect(not wanted - landed,
                   f"Publiquei um alerta '{severity}' na exchange '{self.exchange}' ({kind}) e ele não "
                   f"chegou a {_queues(wanted - landed)} "
                   f"({'chegou a ' + _queues(landed) if landed else 'não chegou a fila nenhuma'}). "
                   f"{_routing_hint(kind)}")
            expect(not landed - wanted,
                   f"Publiquei um alerta '{severity}' na exchange '{self.exchange}' ({kind}) e ele chegou "
                   f"também a {_queues(landed - wanted)}, que não "
                   f"{'quer' if len(landed - wanted) == 1 else 'querem'} alertas '{severity}'. "
                   f"{_routing_hint(kind)}")


def _queues(names) -> str:
    """'a', 'b' e 'c' (for hints)."""
    names = sorted(names)
    if not names:
        return "nenhuma fila"
    return ", ".join(f"'{n}'" for n in names[:-1]) + (" e " if len(names) > 1 else "") + f"'{names[-1]}'"


def _routing_hint(kind: str | None) -> str:
    if kind == "fanout":
        return ("Uma exchange fanout ignora a routing key e entrega TUDO a todas as filas ligadas: "
                "escolha um tipo que olhe a routing key.")
    if kind == "direct":
        return ("Numa exchange direct, a fila recebe só as mensagens cuja routing key é igual a uma das "
                "suas binding keys. Uma fila pode ter vários bindings, várias filas podem usar a mesma "
                "chave, e '#' e '*' não são curingas aqui (só numa exchange topic).")
    return "Confira os bindings de cada fila (e o tipo da exchange) com show_topology(curso)."
