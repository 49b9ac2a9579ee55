"""Checks for chapter 3 (Trocas e filas). Statements: solutions/03_trocas_e_filas.ipynb.

Every exercise here asks the learner to build a topology (exchanges, queues, bindings). The check
does not trust anything the learner's code says: `verify` probes the broker itself. It purges the
exercise's queues, publishes its own messages to the learner's exchange (with publisher confirms)
and reads back, over AMQP, which queue received which message. The messages are then left in the
queues (requeued in place), so the learner can look at them in the management UI.

Because the probe lives in `verify`, the grader's broker-side run (outside the learner's kernel,
with the student's own credentials) repeats the whole routing test: only a topology that really
routes as asked passes.
"""
from __future__ import annotations

import pika
import pika.exceptions

from .. import kit
from ..checks import CheckContext, Exercise, expect

Message = tuple[str, str, "dict | None", str]  # (exchange, routing key, headers, body)
START_CLEAN = ("(Ligações de tentativas anteriores continuam no broker: para recomeçar limpo, apague a "
               "exchange no começo da célula, com channel.exchange_delete(exchange=...).)")


# --- what the broker has ----------------------------------------------------------------------

def _expect_exchange(ctx: CheckContext, name: str, kind: str) -> dict:
    """The exchange's management record; fails with a hint if missing, of another type or transient."""
    info = ctx.management.exchange_or_none(name)
    expect(info is not None,
           f"A exchange '{name}' não existe no broker. Declare-a com channel.exchange_declare("
           f"exchange='{name}', exchange_type='{kind}', durable=True).")
    expect(info.get("type") == kind,
           f"A exchange '{name}' é do tipo '{info.get('type')}'; o exercício pede '{kind}'. O tipo não "
           f"muda depois de criada: apague-a (channel.exchange_delete(exchange='{name}')) e declare de novo "
           f"com exchange_type='{kind}'.")
    expect(info.get("durable"),
           f"A exchange '{name}' não é durável: ela (e as suas ligações) sumiria num reinício do broker. "
           f"Apague-a (channel.exchange_delete(exchange='{name}')) e declare com durable=True.")
    return info


def _expect_queues(ctx: CheckContext, names: list[str]) -> dict[str, dict]:
    """Management records of the exercise's queues; each must exist as a plain durable queue."""
    records = {}
    for name in names:
        try:
            records[name] = kit.expect_durable_queue(ctx, name, "sua resposta")
        except AssertionError as exc:
            if ctx.queue(name) is None:  # the usual cause here: declared exclusive, gone with its connection
                raise AssertionError(f"{exc} (Uma fila exclusive=True some quando a conexão que a criou "
                                     f"fecha.)") from None
            raise
    return records


def _describe_bindings(bindings: list[dict]) -> str:
    """'estoque ← criado; emails ← pago' (headers: the arguments) for hints."""
    if not bindings:
        return "nenhuma"
    parts = []
    for b in bindings:
        args = {k: v for k, v in (b.get("arguments") or {}).items()}
        what = ", ".join(f"{k}={v}" for k, v in sorted(args.items())) if args else repr(b["routing_key"])
        kind = "exchange " if b["destination_type"] == "exchange" else ""
        parts.append(f"{kind}{b['destination']} ← {what}")
    return "; ".join(parts)


# --- the probe -------------------------------------------------------------------------------

def _probe(ctx: CheckContext, messages: list[Message], queues: list[str]) -> dict[str, list[str]]:
    """Purge `queues`, publish `messages` and return the bodies each queue received, in order.

    Publishes with confirms and mandatory=True (an unroutable message is simply not anywhere);
    reads with basic_get and closes the channel without acking, so the messages go back in place.
    """
    connection = ctx.curso.connect()
    try:
        channel = connection.channel()
        for name in queues:
            ok = channel.queue_declare(queue=name, passive=True).method
            expect(ok.consumer_count == 0,
                   f"A fila '{name}' tem {ok.consumer_count} consumidor(es) ligado(s): eles levariam as "
                   f"mensagens da verificação. Cancele-os (channel.cancel()) ou feche a conexão deles.")
            channel.queue_purge(queue=name)
        channel.confirm_delivery()
        for exchange, key, headers, body in messages:
            try:
                channel.basic_publish(exchange=exchange, routing_key=key, body=body,
                                      properties=pika.BasicProperties(headers=headers), mandatory=True)
            except pika.exceptions.UnroutableError:
                pass  # it reached no queue: that is information too
            except pika.exceptions.NackError:
                pass  # a full queue refused it (x-overflow=reject-publish): the bodies will tell
        reader = connection.channel()
        received = {}
        for name in queues:
            bodies = []
            while True:
                method, _properties, body = reader.basic_get(queue=name, auto_ack=False)
                if method is None:
                    break
                bodies.append(body.decode())
            received[name] = bodies
        reader.close()  # unacked messages go back to their queues, in place
        return received
    finally:
        kit.close_quietly(connection)


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
        received = _probe(ctx, [(self.exchange, key, None, key) for key, _ in self.routes], self.queues)
        problem = _compare(received, _expected_by_queue(self.routes, self.queues), lambda b: f"'{b}'")
        if problem is None:
            return
        bindings = kit.bindings_from(ctx, self.exchange)
        by_name = [b for b in bindings if b["routing_key"] in self.queues]
        hint = (f"Publiquei na exchange '{self.exchange}' as routing keys "
                f"{[key for key, _ in self.routes]} (o corpo de cada mensagem é a própria routing key) e "
                f"{problem}. Ligações de '{self.exchange}' no broker: {_describe_bindings(bindings)}.")
        if by_name:
            hint += (" Você usou nomes de fila como binding key: numa exchange direct o que vale é a binding "
                     "key igual à routing key do evento (criado, pago...), não o nome da fila. Ligue cada "
                     "fila uma vez por evento que ela quer receber.")
        else:
            hint += (" Lembre: várias filas podem ser ligadas com a mesma chave, e uma fila pode ser ligada "
                     "com várias chaves (um queue_bind para cada). " + START_CLEAN)
        expect(False, hint)


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
        received = _probe(ctx, [(self.exchange, key, None, key) for key, _ in self.routes], self.queues)
        expected = _expected_by_queue(self.routes, self.queues)
        for queue in self.queues:
            problem = _compare({queue: received[queue]}, {queue: expected[queue]}, lambda b: f"'{b}'")
            if problem is None:
                continue
            keys = [b["routing_key"] for b in kit.bindings_from(ctx, self.exchange) if b["destination"] == queue]
            expect(False,
                   f"Publiquei {len(self.routes)} eventos na exchange '{self.exchange}' (alguns além dos do "
                   f"enunciado, seguindo as mesmas regras) e {problem}. A regra dela: "
                   f"{self.rules[queue]}. Binding keys dela no broker: {keys or 'nenhuma'}. Lembre: * casa "
                   f"exatamente uma palavra, # casa zero ou mais. {START_CLEAN}")


# --- 3.3 headers -------------------------------------------------------------------------------

class DocumentosPorCabecalho(Exercise):
    id = "3.3"
    title = "A exchange headers 'documentos' usa x-match all e any onde devem."
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
        received = _probe(ctx, messages, self.queues)
        routes = [(body, targets) for body, _, targets in self.documents]
        problem = _compare(received, _expected_by_queue(routes, self.queues), self._label)
        if problem is None:
            return
        bindings = kit.bindings_from(ctx, self.exchange)
        hint = (f"Publiquei {len(self.documents)} documentos na exchange '{self.exchange}' e {problem}. "
                f"Ligações de '{self.exchange}' no broker: {_describe_bindings(bindings)}. ")
        if any(not (b.get("arguments") or {}) for b in bindings):
            hint += ("Há ligação sem argumentos: a exchange headers ignora a routing key, e uma ligação sem "
                     "cabeçalhos (x-match all, sem condições) casa qualquer mensagem. Passe as condições em "
                     "arguments={...}. ")
        hint += ("x-match=all exige todos os pares da ligação; x-match=any basta um; sem x-match, vale all. "
                 + START_CLEAN)
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
               f"A ligação entre exchanges está ao contrário: '{self.destination}' → '{self.source}'. Em "
               f"channel.exchange_bind(destination=..., source=..., routing_key=...), a mensagem vai da "
               f"source para a destination: source='{self.source}', destination='{self.destination}'. "
               f"Desfaça a errada com channel.exchange_unbind(...) ou apague as exchanges e recomece.")
        expect(links,
               f"Não há ligação da exchange '{self.source}' para a exchange '{self.destination}'. O exercício "
               f"pede uma ligação entre exchanges: channel.exchange_bind(destination='{self.destination}', "
               f"source='{self.source}', routing_key=...), e não filas ligadas direto na '{self.source}'.")
        direct = [b for b in kit.bindings_from(ctx, self.source) if b["destination_type"] == "queue"
                  and b["destination"] in self.queues]
        expect(not direct,
               f"As filas de auditoria não devem ser ligadas direto na '{self.source}' "
               f"({_describe_bindings(direct)}): elas recebem tudo pela '{self.destination}', que por sua vez "
               f"recebe da '{self.source}'. Desligue-as (channel.queue_unbind) ou apague a '{self.source}' e recomece.")
        received = _probe(ctx, [(exchange, key, None, key) for exchange, key in self.messages], self.queues)
        archive, panel = self.queues
        sent = (f"na '{self.source}' as routing keys "
                f"{', '.join(key for exchange, key in self.messages if exchange == self.source)}, e direto na "
                f"'{self.destination}' a mensagem "
                f"{', '.join(key for exchange, key in self.messages if exchange == self.destination)}")
        problem = _compare({archive: received[archive]}, {archive: self.archived}, lambda b: f"'{b}'")
        expect(problem is None,
               f"Publiquei {sent}; {problem}. Ligação {self.source} → {self.destination} no broker: "
               f"{_describe_bindings([b for b in links if b['source'] == self.source])}. Toda routing key que "
               f"começa com a palavra venda (inclusive 'venda' sozinha e 'venda.paga.br') deve passar; "
               f"'devolucao.venda' e 'vendas.relatorio' não. {START_CLEAN}")
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
