"""Checks for chapter 3 (Trocas e filas). Statements: solutions/03_trocas_e_filas.ipynb.

Every exercise here asks the learner to build a topology (exchanges, queues, bindings). The check
does not trust anything the learner's code says: `verify` probes the broker itself. It purges the
exercise's queues, publishes its own messages to the learner's exchange (with publisher confirms)
and reads back, over AMQP, which queue received which message. The messages are then left in the
queues (requeued in place), so the learner can look at them in the management UI.

Because the probe lives in `verify`, the grader's broker-side run (outside the learner's kernel,
with the student's own credentials) repeats the whole routing test: only a topology that really
routes as asked passes.

The answers here are cells, not functions: when one of their declarations is refused by the broker
(a 406 for an argument of the wrong type, ...), the cell raises and the object is simply missing.
In the kernel, the check reads that refusal where IPython keeps the exception of the last failed
cell (`sys.last_value`) and names it, instead of only saying that the object does not exist.
A hint says that bindings of an earlier try may be left on the broker only when the broker holds
bindings that explain the fault (extra ones, not a missing one).
"""
from __future__ import annotations

import re
import sys

import pika
import pika.exceptions

from ...errors import StrictModeError
from .. import kit
from ..checks import CheckContext, Exercise, expect

Message = tuple[str, str, "dict | None", str]  # (exchange, routing key, headers, body)


def _start_clean(exchange: str) -> str:
    """Said only when the broker holds bindings that explain the fault: they may be an earlier try's."""
    return (f"(Se algum desses bindings sobrou de uma tentativa anterior: bindings ficam no broker até serem "
            f"desfeitos ou a exchange ser apagada. Comece a célula com "
            f"channel.exchange_delete(exchange='{exchange}') e rode-a de novo.)")


# --- what the learner's answer cell was refused (kernel side) ---------------------------------

# Channel errors the broker gave the learner's cells, newest last: IPython keeps only the last failed
# cell's exception (sys.last_value), and the next failed check cell replaces it, so the check
# remembers the refusals it has seen.
_REFUSALS: list = []


def _refusal_text(exc: BaseException) -> str:
    return str(exc.reply_text) if isinstance(exc, pika.exceptions.ChannelClosedByBroker) else str(exc)


def _refusal_naming(ctx: CheckContext, name: str):
    """Kernel side: the refusal of a declaration naming `name` in a failed answer cell (the broker's
    ChannelClosedByBroker, or strict mode's StrictModeError: what RabbitMQ 4.x refuses), or None."""
    if ctx.namespace is None:
        return None
    last = getattr(sys, "last_value", None)
    if (isinstance(last, (pika.exceptions.ChannelClosedByBroker, StrictModeError))
            and all(last is not r for r in _REFUSALS)):
        _REFUSALS.append(last)
        del _REFUSALS[:-10]
    return next((r for r in reversed(_REFUSALS) if f"'{name}'" in _refusal_text(r)), None)


def _forget_refusals(name: str) -> None:
    """`name` exists now: an old refusal naming it no longer explains anything."""
    _REFUSALS[:] = [r for r in _REFUSALS if f"'{name}'" not in _refusal_text(r)]


def _refusal_hint(what: str, refusal) -> str:
    text = _refusal_text(refusal)
    if isinstance(refusal, StrictModeError):
        return (f"{what} não existe no broker: a sua célula de resposta parou num erro ao declará-la, e o resto "
                f"dela não rodou. {text} Corrija a declaração e rode a célula de resposta de novo.")
    hint = (f"{what} não existe no broker: quando a sua célula de resposta a declarou, o broker recusou a "
            f"declaração e fechou o canal ({refusal.reply_code} {text}), e o resto da célula não rodou.")
    argument = re.search(r"invalid arg '([^']+)'", text)
    if argument and re.search(r"integer|unacceptable_type|longstr", text):  # 3.10 and 4.x wordings
        hint += (f" O argumento {argument.group(1)} tem valor de tipo errado: argumentos de fila como x-max-length, "
                 f"x-max-length-bytes e x-message-ttl são um número inteiro ({{'{argument.group(1)}': 3}}), não um "
                 f"texto ('3').")
    elif "inequivalent arg" in text:
        hint += (" Ela já existia com outros argumentos, que não mudam depois de criada: apague-a antes "
                 "(queue_delete / exchange_delete) e declare de novo.")
    return hint + " Corrija a declaração e rode a célula de resposta de novo."


# --- what the broker has ----------------------------------------------------------------------

def _expect_exchange(ctx: CheckContext, name: str, kind: str) -> dict:
    """The exchange's management record; fails with a hint if missing, of another type or transient."""
    info = ctx.management.exchange_or_none(name)
    if info is None:
        refusal = _refusal_naming(ctx, name)
        if refusal is not None:
            raise AssertionError(_refusal_hint(f"A exchange '{name}'", refusal))
    expect(info is not None,
           f"A exchange '{name}' não existe no broker. Declare-a com channel.exchange_declare("
           f"exchange='{name}', exchange_type='{kind}', durable=True).")
    _forget_refusals(name)
    expect(info.get("type") == kind,
           f"A exchange '{name}' é do tipo '{info.get('type')}'; o exercício pede '{kind}'. O tipo não "
           f"muda depois de criada: apague-a (channel.exchange_delete(exchange='{name}')) e declare de novo "
           f"com exchange_type='{kind}'.")
    expect(info.get("durable"),
           f"A exchange '{name}' não é durável: ela, com os seus bindings, sumiria num reinício do broker. "
           f"Apague-a (channel.exchange_delete(exchange='{name}')) e declare com durable=True.")
    return info


def _expect_queues(ctx: CheckContext, names: list[str]) -> dict[str, dict]:
    """Management records of the exercise's queues; each must exist as a plain durable queue."""
    records = {}
    for name in names:
        if ctx.queue(name) is None:
            refusal = _refusal_naming(ctx, name)
            if refusal is not None:
                raise AssertionError(_refusal_hint(f"A fila '{name}'", refusal))
        try:
            records[name] = kit.expect_durable_queue(ctx, name, "sua resposta")
        except AssertionError as exc:
            if ctx.queue(name) is None:  # declared exclusive (gone with its connection), or refused
                raise AssertionError(f"{exc} (Se a célula de resposta deu erro, o broker pode ter recusado a "
                                     f"declaração: leia a mensagem do erro. Uma fila exclusive=True some quando "
                                     f"a conexão que a criou fecha.)") from None
            raise
        _forget_refusals(name)
    return records


def _describe_bindings(bindings: list[dict]) -> str:
    """'estoque ← criado; emails ← pago' (headers: the arguments) for hints."""
    if not bindings:
        return "nenhum"
    parts = []
    for b in bindings:
        args = {k: v for k, v in (b.get("arguments") or {}).items()}
        what = ", ".join(f"{k}={v}" for k, v in sorted(args.items())) if args else repr(b["routing_key"])
        kind = "exchange " if b["destination_type"] == "exchange" else ""
        parts.append(f"{kind}{b['destination']} ← {what}")
    return "; ".join(parts)


def _extra_bodies(received: list[str], wanted: list[str]) -> list[str]:
    return [b for b in received if b not in wanted]


def _expected_by_queue(routes: list[tuple[str, list[str]]], queues: list[str]) -> dict[str, list[str]]:
    """From [(body, [queues it must reach])] to {queue: [bodies, in publish order]}."""
    return {q: [body for body, targets in routes if q in targets] for q in queues}


def _compare(received: dict[str, list[str]], expected: dict[str, list[str]], label) -> str | None:
    """The first difference as a pt-BR sentence, or None. `label(body)` names a message."""
    for queue, wanted in expected.items():
        got = received.get(queue, [])
        if got == wanted:
            continue
        missing = [label(b) for b in wanted if b not in got]
        extra = [label(b) for b in got if b not in wanted]
        parts = []
        if missing:
            parts.append(f"não recebeu {', '.join(missing)}")
        if extra:
            parts.append(f"recebeu {', '.join(extra)}, que não deveria")
        if not parts:
            parts.append(f"recebeu {[label(b) for b in got]} nessa ordem; esperava {[label(b) for b in wanted]}")
        return f"a fila '{queue}' " + " e ".join(parts)
    return None


# --- 3.1 direct ------------------------------------------------------------------------------

class CentralDePedidos(Exercise):
    id = "3.1"
    title = "A exchange direct 'pedidos' entrega cada evento às filas certas."
    points = 2
    exchange = "pedidos"
    queues = ["estoque", "faturamento", "emails"]
    routes = [
        ("criado", ["estoque", "emails"]),
        ("pago", ["faturamento", "emails"]),
        ("cancelado", ["estoque", "faturamento", "emails"]),
        ("enviado", ["emails"]),
        ("rascunho", []),
        # the queues' own names must not work as addresses on a direct exchange
        ("estoque", []),
        ("faturamento", []),
        ("emails", []),
    ]

    def verify(self, ctx: CheckContext) -> None:
        _expect_exchange(ctx, self.exchange, "direct")
        _expect_queues(ctx, self.queues)
        received = kit.probe_routing(ctx, [(self.exchange, key, None, key) for key, _ in self.routes], self.queues)
        problem = _compare(received, _expected_by_queue(self.routes, self.queues), lambda b: f"'{b}'")
        if problem is not None:
            expect(False, self._routing_hint(ctx, problem))
        self._expect_closed(ctx)

    def _routing_hint(self, ctx: CheckContext, problem: str) -> str:
        bindings = kit.bindings_from(ctx, self.exchange)
        wanted = {(q, key) for key, targets in self.routes for q in targets}
        unexpected = [b for b in bindings if (b["destination"], b["routing_key"]) not in wanted]
        by_name = [b for b in unexpected if b["routing_key"] in self.queues]
        hint = (f"Publiquei na exchange '{self.exchange}' as routing keys "
                f"{[key for key, _ in self.routes]} (o corpo de cada mensagem é a própria routing key) e "
                f"{problem}. Bindings de '{self.exchange}' no broker: {_describe_bindings(bindings)}.")
        if by_name:
            hint += (" Você usou nomes de fila como binding key: numa exchange direct o que vale é a binding "
                     "key igual à routing key do evento (criado, pago...), não o nome da fila. Ligue cada "
                     "fila uma vez por evento que ela quer receber.")
        others = [b for b in unexpected if b not in by_name]
        if others:
            hint += f" Bindings que a topologia pedida não tem: {_describe_bindings(others)}."
        if unexpected:
            hint += f" {_start_clean(self.exchange)}"
        else:
            hint += (" Lembre: várias filas podem ser ligadas com a mesma chave, e uma fila pode ser ligada "
                     "com várias chaves (um queue_bind para cada).")
        return hint

    def _expect_closed(self, ctx: CheckContext) -> None:
        """The statement asks to connect as in chapter 2: the answer cell's connection is closed."""
        left = kit.answer_cell_left_open(ctx)
        expect(left is None,
               f"A topologia está certa, mas a célula de resposta deixou uma conexão aberta ({left}). Como no "
               f"capítulo 2, feche-a no fim: connection.close(), ou abra-a num bloco `with "
               f"pika.BlockingConnection(curso.params()) as connection:`, que fecha sozinho.")


# --- 3.2 topic (reasoning) -------------------------------------------------------------------

class EventosPorTopico(Exercise):
    id = "3.2"
    title = "As binding keys da exchange topic 'eventos' seguem as três regras."
    points = 2
    exchange = "eventos"
    queues = ["brasil", "pedidos", "criacoes"]
    # The statement shows some of these; the rest follow the same rules (no hard-coding).
    routes = [
        ("pedido.criado.br", ["brasil", "pedidos", "criacoes"]),
        ("pedido.criado.pt", ["pedidos", "criacoes"]),
        ("pedido.pago.br", ["brasil", "pedidos"]),
        ("pedido.item.criado.br", ["brasil", "pedidos"]),
        ("estoque.baixo.br", ["brasil"]),
        ("estoque.baixo.pt", []),
        ("cliente.criado.pt", ["criacoes"]),
        ("pedido.criado.expresso.br", ["brasil", "pedidos", "criacoes"]),
        ("cliente.endereco.alterado.br", ["brasil"]),
        ("pedido.pagamento.recusado.pt", ["pedidos"]),
        ("fornecedor.pedido.criado.br", ["brasil"]),
        ("produto.criado.br", ["brasil", "criacoes"]),
    ]
    rules = {
        "brasil": "todo evento cuja última palavra é br, com qualquer número de palavras",
        "pedidos": "todo evento cuja primeira palavra é pedido, com qualquer número de palavras",
        "criacoes": "todo evento cuja segunda palavra é criado, com qualquer número de palavras depois",
    }

    def verify(self, ctx: CheckContext) -> None:
        _expect_exchange(ctx, self.exchange, "topic")
        _expect_queues(ctx, self.queues)
        received = kit.probe_routing(ctx, [(self.exchange, key, None, key) for key, _ in self.routes], self.queues)
        expected = _expected_by_queue(self.routes, self.queues)
        for queue in self.queues:
            problem = _compare({queue: received[queue]}, {queue: expected[queue]}, lambda b: f"'{b}'")
            if problem is None:
                continue
            keys = [b["routing_key"] for b in kit.bindings_from(ctx, self.exchange) if b["destination"] == queue]
            hint = (f"Publiquei {len(self.routes)} eventos na exchange '{self.exchange}' (alguns além dos do "
                    f"enunciado, seguindo as mesmas regras) e {problem}. A regra dela: "
                    f"{self.rules[queue]}. Binding keys dela no broker: {keys or 'nenhuma'}. Lembre: * casa "
                    f"exatamente uma palavra, # casa zero ou mais.")
            extra = _extra_bodies(received[queue], expected[queue])
            wrong = [k for k in keys if any(kit.topic_matches(k, rk) for rk in extra)]
            if wrong:
                hint += (f" Quem leva a ela o que não deveria: {', '.join(repr(k) for k in wrong)}"
                         f" (casa {', '.join(repr(rk) for rk in extra if any(kit.topic_matches(k, rk) for k in wrong))}).")
                if len(keys) > 1:
                    hint += f" Uma binding key por fila resolve; {_start_clean(self.exchange)}"
            expect(False, hint)


# --- 3.3 headers -------------------------------------------------------------------------------

class DocumentosPorCabecalho(Exercise):
    id = "3.3"
    title = "A exchange headers 'documentos' entrega cada documento às filas certas."
    points = 2
    exchange = "documentos"
    queues = ["contratos_grandes", "revisao"]
    # (body, headers, queues it must reach); the routing key is set to "contrato" on purpose
    documents = [
        ("doc 1", {"tipo": "contrato", "valor": "alto"}, ["contratos_grandes"]),
        ("doc 2", {"tipo": "contrato", "valor": "baixo"}, []),
        ("doc 3", {"tipo": "contrato", "valor": "alto", "urgente": "sim"}, ["contratos_grandes", "revisao"]),
        ("doc 4", {"urgente": "sim"}, ["revisao"]),
        ("doc 5", {"origem": "scanner", "tipo": "nota"}, ["revisao"]),
        ("doc 6", {"tipo": "contrato"}, []),
        ("doc 7", {"valor": "alto"}, []),
        ("doc 8", {}, []),
        ("doc 9", {"origem": "email", "urgente": "nao"}, []),
        ("doc 10", {"origem": "scanner", "urgente": "sim", "tipo": "contrato"}, ["revisao"]),
    ]

    def _label(self, body: str) -> str:
        headers = next(h for b, h, _ in self.documents if b == body)
        text = ", ".join(f"{k}={v}" for k, v in headers.items()) or "sem cabeçalhos"
        return f"{body} ({text})"

    def verify(self, ctx: CheckContext) -> None:
        _expect_exchange(ctx, self.exchange, "headers")
        _expect_queues(ctx, self.queues)
        messages = [(self.exchange, "contrato", headers or None, body) for body, headers, _ in self.documents]
        received = kit.probe_routing(ctx, messages, self.queues)
        routes = [(body, targets) for body, _, targets in self.documents]
        problem = _compare(received, _expected_by_queue(routes, self.queues), self._label)
        if problem is None:
            return
        bindings = kit.bindings_from(ctx, self.exchange)
        hint = (f"Publiquei {len(self.documents)} documentos na exchange '{self.exchange}' e {problem}. "
                f"Bindings de '{self.exchange}' no broker: {_describe_bindings(bindings)}. ")
        if any(not (b.get("arguments") or {}) for b in bindings):
            hint += ("Há binding sem argumentos: a exchange headers ignora a routing key, e um binding sem "
                     "cabeçalhos (x-match all, sem condições) casa qualquer mensagem. Passe as condições em "
                     "arguments={...}. ")
        hint += "x-match=all exige todos os pares do binding; x-match=any basta um; sem x-match, vale all."
        expected = _expected_by_queue(routes, self.queues)
        crowded = [q for q in self.queues if _extra_bodies(received[q], expected[q])
                   and sum(b["destination"] == q for b in bindings) > 1]
        if crowded:
            hint += (f" A fila {', '.join(repr(q) for q in crowded)} tem mais de um binding, e os bindings de uma "
                     f"fila valem como OU: o documento entra se qualquer um deles casar. "
                     f"{_start_clean(self.exchange)}")
        expect(False, hint)


# --- 3.4 exchange to exchange + queue arguments ------------------------------------------------

class AuditoriaEmCascata(Exercise):
    id = "3.4"
    title = "'loja' repassa as vendas à 'auditoria', e o painel guarda só as 3 últimas."
    points = 2
    source = "loja"
    destination = "auditoria"
    queues = ["auditoria_arquivo", "auditoria_painel"]
    messages = [
        ("loja", "venda.criada"),
        ("loja", "estoque.baixo"),
        ("loja", "venda.paga.br"),
        ("loja", "venda"),
        ("loja", "devolucao.venda"),
        ("loja", "vendas.relatorio"),
        ("loja", "venda.cancelada"),
        ("auditoria", "manual"),  # published straight to 'auditoria' by another system
    ]
    archived = ["venda.criada", "venda.paga.br", "venda", "venda.cancelada", "manual"]
    panel_size = 3

    def verify(self, ctx: CheckContext) -> None:
        _expect_exchange(ctx, self.source, "topic")
        _expect_exchange(ctx, self.destination, "fanout")
        records = _expect_queues(ctx, self.queues)
        links = [b for b in ctx.management.bindings()
                 if b["destination_type"] == "exchange" and {b["source"], b["destination"]} == {self.source, self.destination}]
        reversed_links = [b for b in links if b["source"] == self.destination]
        expect(not reversed_links,
               f"O binding entre exchanges está ao contrário: '{self.destination}' → '{self.source}'. Em "
               f"channel.exchange_bind(destination=..., source=..., routing_key=...), a mensagem vai da "
               f"source para a destination: source='{self.source}', destination='{self.destination}'. "
               f"Desfaça o errado com channel.exchange_unbind(...) ou apague as exchanges e recomece.")
        expect(links,
               f"Não há binding da exchange '{self.source}' para a exchange '{self.destination}'. O exercício "
               f"pede um binding entre exchanges: channel.exchange_bind(destination='{self.destination}', "
               f"source='{self.source}', routing_key=...), e não filas ligadas direto na '{self.source}'.")
        direct = [b for b in kit.bindings_from(ctx, self.source) if b["destination_type"] == "queue"
                  and b["destination"] in self.queues]
        expect(not direct,
               f"As filas de auditoria não devem ser ligadas direto na '{self.source}' "
               f"({_describe_bindings(direct)}): elas recebem tudo pela '{self.destination}', que por sua vez "
               f"recebe da '{self.source}'. Desligue-as (channel.queue_unbind) ou apague a '{self.source}' e recomece.")
        received = kit.probe_routing(ctx, [(exchange, key, None, key) for exchange, key in self.messages], self.queues)
        archive, panel = self.queues
        sent = (f"na '{self.source}' as routing keys "
                f"{', '.join(key for exchange, key in self.messages if exchange == self.source)}, e direto na "
                f"'{self.destination}' a mensagem "
                f"{', '.join(key for exchange, key in self.messages if exchange == self.destination)}")
        problem = _compare({archive: received[archive]}, {archive: self.archived}, lambda b: f"'{b}'")
        if problem is not None:
            forward = [b for b in links if b["source"] == self.source]
            hint = (f"Publiquei {sent}; {problem}. Binding {self.source} → {self.destination} no broker: "
                    f"{_describe_bindings(forward)}. Toda routing key que começa com a palavra venda (inclusive "
                    f"'venda' sozinha e 'venda.paga.br') deve passar; 'devolucao.venda' e 'vendas.relatorio' não.")
            extra = _extra_bodies(received[archive], self.archived)
            wrong = [b["routing_key"] for b in forward if any(kit.topic_matches(b["routing_key"], rk) for rk in extra)]
            if wrong and len(forward) > 1:
                hint += (f" Quem deixa passar o que não deveria: {', '.join(repr(k) for k in wrong)}; um binding "
                         f"basta. {_start_clean(self.source)}")
            expect(False, hint)
        arguments = records[panel].get("arguments") or {}
        wanted = self.archived[-self.panel_size:]
        if arguments.get("x-max-length") != self.panel_size:
            advice = (f" Declare-a com arguments={{'x-max-length': {self.panel_size}}} (apague-a antes com "
                      f"channel.queue_delete(queue='{panel}'): os argumentos de uma fila não mudam depois de criada).")
        elif arguments.get("x-overflow", "drop-head") != "drop-head":
            advice = (f" Com x-overflow={arguments['x-overflow']!r} a fila cheia recusa as novas; o padrão "
                      f"(drop-head) descarta as mais antigas, que é o que se quer aqui. Apague a fila e declare-a "
                      f"sem x-overflow.")
        else:
            advice = ""
        expect(received[panel] == wanted,
               f"Publiquei {sent}; a fila '{panel}' ficou com {received[panel]}, e deveria guardar só as "
               f"{self.panel_size} mais recentes, {wanted}. Argumentos dela no broker: "
               f"{arguments or 'nenhum'}." + advice)
