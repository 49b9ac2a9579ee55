"""Checks for chapter 1 (Mensageria e RabbitMQ). Statements: solutions/01_mensageria.ipynb.

Every exercise is about the AMQP model (exchanges, bindings, queues), so `run` rebuilds the
exercise's broker objects from nothing before calling the learner's function, and `verify` reads
the result from the broker, all of it current at once: exchanges, queues and bindings from the
management API's definitions (1.1), the messages in each queue with the exchange each was
published to (1.2, read through the management API after the learner's connection closed; the
per-exchange publish counters are not used: they lag and can outlive a deleted exchange), and
where the check's own probe messages land (1.3, `routing_table`: publisher confirms + exact ready
counts; the probes are taken out again). No check waits for statistics.

In the kernel, each check also knows exactly what the learner's function did with the channel it
handed over (`kit.record_calls`) and whether the function left a connection of its own open
(`kit.open_connections` before and after the call): the statements ask for the channel received.
"""
from __future__ import annotations


from ...errors import CourseError
from ...scenarios import RESTAURANTE, montar_restaurante
from .. import kit
from ..checks import CheckContext, Exercise, expect


def _queue_bindings(ctx: CheckContext, exchange: str) -> set[tuple[str, str]]:
    """{(queue, binding key)} of the bindings from `exchange` to queues."""
    return {(b["destination"], b["routing_key"]) for b in kit.bindings_from(ctx, exchange)
            if b["destination_type"] == "queue"}


def _describe(bindings) -> str:
    return ", ".join(f"{q} ← '{k}'" for q, k in sorted(bindings)) or "nenhum"


_WATCHED = ("exchange_declare", "queue_declare", "queue_bind", "basic_publish")


def _call_with_channel(ctx: CheckContext, name: str) -> list[tuple[str, dict]]:
    """Call the learner's `name(channel)` with a channel of the check's own (closed afterwards) and
    return what the function did through that channel. Fails if the function left a connection of
    its own open (kernel side, exact: the BlockingConnections open before and after the call)."""
    with kit.learner_channel(ctx, f"{name}(channel)") as channel:
        calls = kit.record_calls(channel, *_WATCHED)
        before = kit.open_connections()
        ctx.call(name, channel)
        leaked = kit.open_connections() - before
    expect(not leaked,
           f"{name}() não usou só o channel recebido: abriu uma conexão própria e a deixou aberta "
           f"({len(leaked)} conexão(ões) ainda aberta(s) depois que a função voltou). O enunciado pede que "
           f"ela faça tudo pelo `channel` que recebe (a verificação abre e fecha a conexão dele): não abra "
           f"outra conexão dentro da função.")
    return calls


def _through_channel(calls: list[tuple[str, dict]], method: str) -> list[dict]:
    """The arguments of each call of `method` made through the channel the check handed over."""
    return [arguments for name, arguments in calls if name == method]


def _expect_queue(ctx: CheckContext, name: str, where: str, calls) -> None:
    """The queue exists as a plain durable queue; when it is gone, say why if an exclusive
    declaration explains it (kernel side: the call through the check's channel is recorded)."""
    if ctx.queue(name) is None:
        exclusive = any(a.get("queue") == name and a.get("exclusive")
                        for a in _through_channel(calls or [], "queue_declare"))
        if exclusive:
            raise AssertionError(
                f"A fila '{name}' não existe mais: {where} a declarou com exclusive=True. Uma fila exclusiva "
                f"pertence à conexão que a declarou e é apagada quando essa conexão fecha (a verificação fecha a "
                f"conexão logo depois de chamar a sua função). Declare-a com durable=True, como pede o enunciado.")
        raise AssertionError(
            f"A fila '{name}' não existe no broker. Declare-a em {where} com "
            f"channel.queue_declare(queue='{name}', durable=True). (Uma fila declarada com exclusive=True "
            f"some quando a conexão que a declarou fecha.)")
    kit.expect_durable_queue(ctx, name, where)


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
        kit.reset_topology(ctx, [self.exchange], self.queues)
        self.calls = None
        self.calls = _call_with_channel(ctx, "montar_notificacoes")

    def verify(self, ctx: CheckContext) -> None:
        calls = getattr(self, "calls", None)  # kernel side only
        ex = ctx.management.exchange_or_none(self.exchange)
        expect(ex is not None, f"A exchange '{self.exchange}' não existe no broker. Declare-a com "
                               f"channel.exchange_declare(exchange='{self.exchange}', "
                               f"exchange_type='{self.exchange_type}', durable=True).")
        expect(ex["type"] == self.exchange_type,
               f"A exchange '{self.exchange}' é do tipo '{ex['type']}'; o enunciado pede "
               f"'{self.exchange_type}' (cada evento vai só para as filas ligadas com aquela chave).")
        expect(ex.get("durable"), f"A exchange '{self.exchange}' não é durável: declare-a com durable=True.")
        for name in self.queues:
            _expect_queue(ctx, name, "montar_notificacoes()", calls)
        found = _queue_bindings(ctx, self.exchange)
        missing, extra = self.bindings - found, found - self.bindings
        expect(not missing and not extra,
               f"Os bindings da exchange '{self.exchange}' não são os pedidos. "
               f"Faltam: {_describe(missing)}. Sobram: {_describe(extra)}. Use "
               f"channel.queue_bind(queue=FILA, exchange='{self.exchange}', routing_key=CHAVE), "
               f"uma vez para cada par fila ← chave.")
        if calls is None:
            return
        # Kernel side: the broker holds the right topology; was it declared through the channel given?
        declared = ({a.get("exchange") for a in _through_channel(calls, "exchange_declare")} |
                    {a.get("queue") for a in _through_channel(calls, "queue_declare")})
        bound = {(a.get("queue"), a.get("routing_key")) for a in _through_channel(calls, "queue_bind")
                 if a.get("exchange") == self.exchange}
        elsewhere = ([f"a exchange '{self.exchange}'"] * (self.exchange not in declared)
                     + [f"a fila '{q}'" for q in self.queues if q not in declared]
                     + [f"o binding {q} ← '{k}'" for q, k in sorted(self.bindings - bound)])
        expect(not elsewhere,
               f"O broker mostra a topologia certa, mas montar_notificacoes() não declarou pelo channel "
               f"recebido: {', '.join(elsewhere)}. O enunciado pede que a função use o `channel` que recebe "
               f"(channel.exchange_declare, channel.queue_declare, channel.queue_bind), sem abrir outra conexão.")


# --- 1.2 -----------------------------------------------------------------------------------

class Avisar(Exercise):
    id = "1.2"
    title = "Cada mensagem entrou pela exchange certa e chegou só às filas certas."
    points = 2
    novo = "pedido 7: novo"
    saiu = "pedido 7: saiu para entrega"
    # queue -> the (body, exchange it was published to) it must hold, and nothing else
    expected = {"cozinha": [(novo, "pedidos")], "financeiro": [(novo, "pedidos")],
                "entrega": [(saiu, "avisos")], "app_cliente": [(saiu, "avisos")]}
    publishes = 2  # one basic_publish per message

    def run(self, ctx: CheckContext) -> None:
        montar_restaurante(ctx.curso)
        self.publish_calls = None
        calls = _call_with_channel(ctx, "avisar")
        # The connection is closed: everything avisar() published has been routed to its queues.
        self.publish_calls = len(_through_channel(calls, "basic_publish"))

    def verify(self, ctx: CheckContext) -> None:
        for exchange, kind in RESTAURANTE["exchanges"].items():
            ex = ctx.management.exchange_or_none(exchange)
            expect(ex is not None and ex["type"] == kind,
                   f"A exchange '{exchange}' sumiu ou mudou de tipo. avisar() não deve mudar a "
                   f"topologia, só publicar.")
            wanted = {(q, k) for e, q, k in RESTAURANTE["bindings"] if e == exchange}
            found = _queue_bindings(ctx, exchange)
            expect(found == wanted,
                   f"Os bindings da exchange '{exchange}' mudaram (agora: {_describe(found)}). O exercício "
                   f"é usar a topologia como ela está: avisar() só deve publicar.")
        # The messages in each queue, read through the management API (each read puts them back):
        # current at once, since the learner's connection was closed after avisar() returned. A
        # message remembers the exchange it was published to, so copies published straight into
        # each queue through the default exchange "" show up as such.
        contents = {}
        for queue in self.expected:
            expect(ctx.queue(queue) is not None, f"A fila '{queue}' sumiu: avisar() só deve publicar.")
            contents[queue] = sorted((m.get("payload", ""), m.get("exchange", ""))
                                     for m in ctx.management.peek(queue, 10))
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
        # Kernel side only: how often avisar() called basic_publish on the channel it was given
        # (a publish that no queue took leaves no trace in the broker).
        calls = getattr(self, "publish_calls", None)
        expect(calls is None or calls >= self.publishes,
               f"As filas ficaram certas, mas avisar() chamou channel.basic_publish no channel recebido "
               f"{calls} vez(es), e não {self.publishes}: publicou por outro canal. O enunciado pede que "
               f"avisar() publique pelo `channel` que recebe, sem abrir outra conexão.")
        expect(calls is None or calls <= self.publishes,
               f"As filas ficaram certas, mas avisar() chamou channel.basic_publish {calls} vezes; o "
               f"enunciado pede uma chamada para cada mensagem ({self.publishes}). Uma publicação numa "
               f"exchange já chega a todas as filas cujos bindings casam: não publique também com outras "
               f"chaves ou em outras exchanges \"para garantir\" (a publicação que nenhuma fila pega é "
               f"descartada sem aviso).")

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
        kit.reset_topology(ctx, [self.exchange], self.queues)
        self.calls = None
        self.calls = _call_with_channel(ctx, "montar_alertas")

    def verify(self, ctx: CheckContext) -> None:
        from ...routing import routing_table

        calls = getattr(self, "calls", None)  # kernel side only
        ex = ctx.management.exchange_or_none(self.exchange)
        expect(ex is not None,
               f"A exchange '{self.exchange}' não existe no broker: declare-a em montar_alertas() com "
               f"channel.exchange_declare(exchange='{self.exchange}', exchange_type=..., durable=True). "
               f"O tipo é a sua escolha.")
        expect(ex.get("durable"),
               f"A exchange '{self.exchange}' não é durável: o enunciado pede uma exchange durável, que "
               f"(com os seus bindings) sobrevive a um reinício do broker. Declare-a com durable=True "
               f"(a verificação apaga a exchange antes de chamar montar_alertas()).")
        for name in self.queues:
            _expect_queue(ctx, name, "montar_alertas()", calls)
            counts = kit.exact_counts(ctx, name)
            expect(counts is None or not counts[1],
                   f"A fila '{name}' tem consumidor: montar_alertas() só deve declarar, sem consumir (o "
                   f"consumidor levaria os alertas de teste).")
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
