"""Chapter 10 exercises: microservices on an event bus (the shop's contracts, inbox, outbox).

The learner's service functions run in the kernel, within the check's time limit, against the
sandbox's broker and a SQLite file the check creates in a scratch folder. The peers around each
service (the producer of orders, the consumer of its events) are the check's own: it publishes the
input events and reads the output events from a queue of its own bound to the output keys.

A crash mid-way is the check's `falha` hook, which the statement tells the learner to call at the
worst moment: when the check decides to crash there, the hook raises `_Crash` (a BaseException, so
that no `except Exception` of the learner's swallows it) and the check closes every connection the
learner's code opened: what the broker and the database hold then is what a SIGKILL would leave.
"""
from __future__ import annotations

import json
import sqlite3

from ...loja import contratos
from ..checks import Exercise, expect
from .. import kit

EXCHANGE = contratos.EXCHANGE
DLX = kit.SHOP_DLX


class _Crash(BaseException):
    """The check's simulated crash (raised by `falha`)."""


# --- helpers ------------------------------------------------------------------------------------

def _confirming(log) -> set[int]:
    return {id(entry[1]) for entry in log if entry[0] == "confirm"}


def _unconfirmed_publishes(log) -> int:
    confirming = _confirming(log)
    return sum(1 for e in log if e[0] == "publish" and id(e[1]) not in confirming)


def _acks_before_publish(log) -> int:
    """Acks that came before the publish of their message's event (each ack needs a new publish
    before it)."""
    publishes = acks = early = 0
    for entry in log:
        if entry[0] == "publish":
            publishes += 1
        elif entry[0] == "ack":
            acks += 1
            if acks > publishes:
                early += 1
    return early


# --- 10.1 ----------------------------------------------------------------------------------------

STOCK_101 = "CREATE TABLE estoque (sku TEXT PRIMARY KEY, quantidade INTEGER NOT NULL);" \
            "INSERT INTO estoque VALUES ('caneca', 5), ('camiseta', 1);"
ORDERS_101 = [
    {"versao": 1, "pedido_id": "p-1", "cliente": "ana", "itens": [{"sku": "caneca", "quantidade": 2}], "total": 60.0},
    {"versao": 1, "pedido_id": "p-2", "cliente": "bia",
     "itens": [{"sku": "caneca", "quantidade": 1}, {"sku": "camiseta", "quantidade": 2}], "total": 150.0},
    {"versao": 1, "pedido_id": "p-3", "cliente": "caio",
     "itens": [{"sku": "camiseta", "quantidade": 1}, {"sku": "caneca", "quantidade": 3}], "total": 140.0},
]
EXPECTED_101 = {"p-1": "estoque.reservado", "p-2": "estoque.indisponivel", "p-3": "estoque.reservado"}


class ServicoEstoque(Exercise):
    """The Estoque service against its contract: reserve or refuse, publish the event, then ack."""

    id = "10.1"
    title = "O serviço de Estoque cumpre o contrato."
    points = 3
    queue = "estoque.pedidos"
    out = "ex101.saida"

    def snapshot(self, ctx):
        kit.shop_bus(ctx, {self.queue: (["pedido.criado"], kit.shop_dead_letter(self.queue)), self.out: (["estoque.*"], None)})

    def run(self, ctx):
        banco = kit.scratch_db("estoque.db", STOCK_101)
        sent = [kit.event_properties(o["pedido_id"], "pedido.criado") for o in ORDERS_101]
        kit.publish_events(ctx, [("pedido.criado", o, p) for o, p in zip(ORDERS_101, sent)])
        kit.release_left_open()
        try:
            with kit.recorded_sqlite(), kit.channel_calls() as log, kit.watch_connections() as left:
                ctx.call("rodar_estoque", ctx.curso.url, banco, on_timeout=lambda: self._hung(ctx))
            expect(not left, kit.left_open_hint("rodar_estoque", left))
            declared = {(e[0], e[2]) for e in log if e[0] in ("exchange_declare", "queue_declare", "queue_bind")}
            missing = [what for what, entry in (
                (f"a exchange '{EXCHANGE}' (exchange_declare)", ("exchange_declare", EXCHANGE)),
                (f"a fila '{self.queue}' (queue_declare)", ("queue_declare", self.queue)),
                (f"a ligação da fila à exchange (queue_bind)", ("queue_bind", self.queue))) if entry not in declared]
            expect(not missing, f"O seu serviço não declarou {', '.join(missing)}: declare a topologia de que "
                                f"ele depende antes de consumir (a verificação a criou antes, mas um serviço "
                                f"novo, num broker vazio, não a encontraria).")
        finally:
            kit.release_left_open()
        ready, consumers = kit.counts_of(ctx, self.queue)
        acks = sum(1 for e in log if e[0] == "ack")
        expect(ready == 0, f"Depois de `rodar_estoque` voltar, {ready} pedido(s) continuam na fila "
                           f"'{self.queue}': consuma todos e confirme cada um com "
                           f"ch.basic_ack(delivery_tag=method.delivery_tag) (sem ack, o pedido volta para a fila).")
        expect(not any(e[0] == "ack" and e[4] for e in log),
               "O seu serviço confirmou os pedidos em lote (basic_ack com multiple=True): dê o ack de cada "
               "pedido, um a um, logo depois do publish confirmado do seu evento — um ack em lote no fim deixa "
               "os pedidos já tratados sem ack, e uma queda os reentrega.")
        expect(acks == len(ORDERS_101),
               f"O seu serviço confirmou {acks} de {len(ORDERS_101)} pedidos com basic_ack (auto_ack=True? "
               f"Com auto_ack, um serviço que cai no meio perde o pedido): consuma com auto_ack=False e "
               f"faça o ack manual depois de publicar o evento.")
        stock = dict(kit.query(banco, "SELECT sku, quantidade FROM estoque"))
        expected = {"caneca": 0, "camiseta": 0}
        expect(stock == expected,
               f"Depois dos três pedidos, a tabela estoque tem {stock}, e devia ter {expected}: o p-1 e o p-3 "
               f"reservam (baixam as quantidades); o p-2 pede 2 camisetas e só há 1, então não reserva NADA "
               f"(nem a caneca) — tudo ou nada, numa transação só (commit só se todos os itens couberem).")

        self._events(ctx, {p.message_id for p in sent})
        expect(not _unconfirmed_publishes(log),
               "O seu serviço publicou eventos num canal sem publisher confirms: chame "
               "channel.confirm_delivery() antes de publicar, para só dar o ack do pedido depois que o "
               "broker guardou o evento.")
        early_publish = sum(1 for e in log if e[0] == "publish" and e[6])
        expect(not early_publish,
               f"O seu serviço publicou {early_publish} evento(s) antes do commit da reserva no banco: se ele "
               f"cair entre o publish e o commit, o evento anuncia uma reserva que não existe. Faça o commit, "
               f"depois publique (e só então o ack).")
        early = _acks_before_publish(log)
        expect(not early, f"O seu serviço deu {early} ack(s) antes de publicar o evento do pedido: se ele cair "
                          f"entre o ack e o publish, o pedido some sem evento. Publique primeiro (com confirms), "
                          f"depois o ack.")
    def _hung(self, ctx) -> str:
        counts = kit.exact_counts(ctx, self.queue) or (0, 0)
        return (f"`rodar_estoque` não voltou em {ctx.call_timeout:g} s ({counts[0]} pedido(s) ainda prontos na "
                f"fila). Consuma com channel.consume('{self.queue}', inactivity_timeout=0.5) e saia do laço "
                f"quando vier (None, None, None) — start_consuming() sem fim trava o serviço.")

    def _events(self, ctx, input_ids: set[str]) -> None:
        messages = ctx.management.peek(self.out, 10)
        got = [((kit.message_props(m).get("correlation_id")), m.get("routing_key")) for m in messages]
        expect(len(messages) == len(ORDERS_101),
               f"Chegaram {len(messages)} evento(s) estoque.* no barramento '{EXCHANGE}', e deviam ser "
               f"{len(ORDERS_101)} (um por pedido: estoque.reservado ou estoque.indisponivel) — "
               f"{got or 'nenhum'}. Publique na exchange '{EXCHANGE}' com a chave do evento.")
        seen = set()
        for message in messages:
            props = kit.message_props(message)
            corr, key = props.get("correlation_id"), message.get("routing_key")
            expect(corr in EXPECTED_101,
                   f"Um evento veio com correlation_id {corr!r}: o correlation_id é o pedido_id do pedido, "
                   f"copiado do pedido recebido (properties.correlation_id), sem mudar.")
            expect(key == EXPECTED_101[corr],
                   f"O pedido {corr} gerou {key!r}, e o certo é {EXPECTED_101[corr]!r} "
                   f"(estoque inicial: caneca 5, camiseta 1, reservando na ordem em que os pedidos chegam).")
            body = kit.expect_convention(message, f"O evento {key} do pedido {corr}", key)
            expect(body.get("pedido_id") == corr,
                   f"O evento do pedido {corr} leva pedido_id {body.get('pedido_id')!r} no corpo.")
            mid = props.get("message_id")
            expect(mid not in input_ids and mid not in seen,
                   f"O evento do pedido {corr} reusa o message_id {mid!r}: cada mensagem NOVA leva um "
                   f"message_id novo (str(uuid.uuid4())); o que se copia do pedido é o correlation_id.")
            seen.add(mid)

    def verify(self, ctx):
        queue = kit.expect_durable_queue(ctx, self.queue, "rodar_estoque")
        del queue
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"A fila '{self.queue}' ainda tem {ready} pedido(s): o serviço não consumiu (ou "
                           f"não confirmou) todos.")
        messages = ctx.management.peek(self.out, 10)
        by_corr = {kit.message_props(m).get("correlation_id"): m.get("routing_key") for m in messages}
        expect(len(messages) == len(ORDERS_101) and by_corr == EXPECTED_101,
               f"Os eventos do estoque no barramento são {by_corr or 'nenhum'}, e deviam ser {EXPECTED_101}.")
        for message in messages:
            kit.expect_convention(message, f"O evento {message.get('routing_key')}", message.get("routing_key"))


# --- 10.2 ----------------------------------------------------------------------------------------

def _order(pedido_id: str, **changes) -> dict:
    body = {"versao": 1, "pedido_id": pedido_id, "cliente": "ana",
            "itens": [{"sku": "caneca", "quantidade": 1}], "total": 30.0}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


GOOD_102 = ["g-1", "g-2"]
MESSAGES_102 = [  # (pedido_id, body, why it is bad or None)
    ("g-1", _order("g-1"), None),
    ("b-versao", _order("b-versao", versao=2), "versão 2 do contrato"),
    ("b-campo", _order("b-campo", cliente=None), "sem o campo cliente"),
    ("b-json", b'{"versao": 1, "pedido_id": "b-json", ', "corpo que não é JSON"),
    ("g-2", _order("g-2"), None),
    ("b-total", _order("b-total", total=-5), "total negativo"),
]
BAD_102 = {pid: why for pid, _b, why in MESSAGES_102 if why}


class ValidarContrato(Exercise):
    """A consumer that validates each order against the schema and dead-letters what it can't read."""

    id = "10.2"
    title = "O que não segue o contrato vai para a dead-letter, sem laço."
    points = 3
    queue = "faturamento.pedidos"
    dlq = "faturamento.pedidos.dlq"

    def snapshot(self, ctx):
        kit.shop_bus(ctx, {self.queue: (["pedido.criado"], kit.shop_dead_letter(self.queue))})

    def run(self, ctx):
        kit.publish_events(ctx, [("pedido.criado", body, kit.event_properties(pid, "pedido.criado"))
                              for pid, body, _why in MESSAGES_102])
        kit.release_left_open()
        looped = False
        try:
            with kit.channel_calls() as log, kit.watch_connections() as left:
                log.max_requeues = 3 * len(MESSAGES_102)
                try:
                    got = ctx.call("consumir_validando", ctx.curso.url, on_timeout=lambda: self._hung(ctx, log))
                except kit.RequeueLoop:
                    looped = True
            if looped:
                kit.close_all(left.created)
            expect(not left or looped, kit.left_open_hint("consumir_validando", left))
        finally:
            kit.release_left_open()
        requeued = [e for e in log if e[0] in ("nack", "reject") and e[3]]
        expect(not requeued, self._loop_hint(len(requeued)))
        expect(isinstance(got, list), f"`consumir_validando` deve devolver a lista dos pedido_id processados, "
                                      f"e devolveu {type(got).__name__}.")
        wrongly = [pid for pid in got if pid in BAD_102]
        expect(not wrongly, "O seu consumidor processou mensagens fora do contrato: "
                            + "; ".join(f"{pid} ({BAD_102[pid]})" for pid in wrongly)
                            + ". Valide cada corpo com contratos.erros('pedido.criado', corpo) e rejeite "
                              "(basic_reject(..., requeue=False)) quando a lista de erros não vier vazia.")
        expect(got == GOOD_102, f"`consumir_validando` devolveu {got!r}, e devia devolver {GOOD_102!r} (os "
                                f"pedido_id das mensagens válidas, na ordem de chegada).")
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"Sobraram {ready} mensagem(ns) na fila '{self.queue}': toda mensagem precisa de um "
                           f"destino — ack para as válidas, basic_reject(requeue=False) para as inválidas.")
        self._dead(ctx)
        acks = sum(1 for e in log if e[0] == "ack")
        expect(acks == len(GOOD_102), f"O seu consumidor fez {acks} basic_ack, e as mensagens válidas são "
                                      f"{len(GOOD_102)}: consuma com auto_ack=False e confirme cada válida.")

    @staticmethod
    def _loop_hint(n: int) -> str:
        return (f"O seu consumidor devolveu {n} mensagem(ns) para a fila (requeue=True — é o padrão de "
                f"basic_nack e basic_reject): uma mensagem que não segue o contrato volta igual e falha de "
                f"novo, num laço sem fim. Rejeite com requeue=False, para ela ir para a dead-letter.")

    def _hung(self, ctx, log) -> str:
        requeued = sum(1 for e in log if e[0] in ("nack", "reject") and e[3])
        if requeued:
            return self._loop_hint(requeued)
        return (f"`consumir_validando` não voltou em {ctx.call_timeout:g} s. Consuma com "
                f"channel.consume('{self.queue}', inactivity_timeout=0.5) e saia quando vier (None, None, None).")

    def _dead(self, ctx) -> None:
        messages = ctx.management.peek(self.dlq, 20)
        dead = {}
        for m in messages:
            dead[kit.message_props(m).get("correlation_id")] = m
        expect(set(dead) == set(BAD_102) and len(messages) == len(BAD_102),
               f"A dead-letter '{self.dlq}' tem {len(messages)} mensagem(ns) ({sorted(map(str, dead))}), e devia "
               f"ter as {len(BAD_102)} inválidas: "
               + "; ".join(f"{pid} ({why})" for pid, why in BAD_102.items())
               + ". Decodifique com try/except (json.loads levanta com um corpo que não é JSON), valide com "
                 "contratos.erros e rejeite com requeue=False.")
        for pid, message in dead.items():
            deaths = (kit.message_props(message).get("headers") or {}).get("x-death") or []
            expect(any(d.get("reason") == "rejected" for d in deaths),
                   f"A mensagem {pid} está na dead-letter sem o cabeçalho x-death de uma rejeição: não a "
                   f"publique você mesmo na '{self.dlq}' — rejeite com basic_reject(requeue=False) e o "
                   f"RabbitMQ a leva para lá (a fila tem x-dead-letter-exchange '{DLX}').")

    def verify(self, ctx):
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"Sobraram {ready} mensagem(ns) na fila '{self.queue}'.")
        dead = kit.counts_of(ctx, self.dlq)[0]
        expect(dead == len(BAD_102), f"A dead-letter '{self.dlq}' tem {dead} mensagem(ns), e devia ter "
                                     f"{len(BAD_102)} (as inválidas).")


# --- 10.3 ----------------------------------------------------------------------------------------

SCHEMA_103 = ("CREATE TABLE envios (pedido_id TEXT NOT NULL, valor REAL NOT NULL);"
              "CREATE TABLE inbox (message_id TEXT PRIMARY KEY);")
MESSAGES_103 = [("m-1", "p-1", 30.0), ("m-2", "p-2", 45.0), ("m-2", "p-2", 45.0), ("m-3", "p-3", 12.5)]


class _Fault:
    """The `falha` hook handed to the learner: counts its calls and crashes at call `at` (1-based),
    after running `on_crash()` (which looks at the state the crash leaves)."""

    def __init__(self, at: int | None = None, on_crash=None) -> None:
        self.at, self.on_crash, self.calls, self.seen = at, on_crash, 0, None

    raised = False

    def __call__(self, *args, **kwargs) -> None:
        self.calls += 1
        if self.calls == self.at:
            self.seen = self.on_crash() if self.on_crash else None
            self.raised = True
            raise _Crash()


_LOOP_103 = ("O seu consumidor devolveu mensagens à fila sem parar (basic_nack/basic_reject com o requeue=True "
             "padrão): a mensagem volta na hora e é entregue de novo, num laço. Uma duplicata já tratada não "
             "se devolve: dê o ack dela (ela já está na inbox).")
_ADVICE_103 = {sqlite3.IntegrityError: "Antes do INSERT na inbox, procure o message_id nela (SELECT): se já estiver "
                                       "lá, a mensagem é uma duplicata ou uma reentrega — não repita o efeito, só "
                                       "dê o ack."}


def _crash_run(ctx, name: str, args: tuple, fault: _Fault, log_hint) -> tuple[bool, list]:
    """Call the learner's `name(*args, fault)`; True if it crashed at the fault. Every connection it
    opened is then closed (what a killed process leaves), and its objects are collected (a SQLite
    connection left mid-transaction releases its lock)."""
    import gc

    crashed = False
    with kit.watch_connections() as left:
        try:
            ctx.call(name, *args, fault, advice=_ADVICE_103, on_timeout=log_hint)
        except _Crash:
            crashed = True
        except kit.RequeueLoop:
            kit.close_all(left.created)
            kit.release_left_open()
            raise AssertionError(_LOOP_103) from None
    kit.close_all(left.created)
    kit.release_left_open()
    gc.collect()
    return crashed, list(left)


class CaixaDeEntrada(Exercise):
    """An idempotent consumer: the message_id in an inbox table, in the same transaction as the effect."""

    id = "10.3"
    title = "Consumidor idempotente: cada pagamento vira um envio só."
    points = 3
    queue = "logistica.pagamentos"

    def snapshot(self, ctx):
        kit.shop_bus(ctx, {self.queue: (["pagamento.aprovado"], kit.shop_dead_letter(self.queue))})

    def run(self, ctx):
        banco = kit.scratch_db("logistica.db", SCHEMA_103)
        kit.publish_events(ctx, [("pagamento.aprovado", {"versao": 1, "pedido_id": pid, "valor": valor},
                               kit.event_properties(pid, "pagamento.aprovado", mid))
                              for mid, pid, valor in MESSAGES_103])
        hung = lambda: (f"`consumir_pagamentos` não voltou em {ctx.call_timeout:g} s: consuma com "  # noqa: E731
                        f"channel.consume('{self.queue}', inactivity_timeout=0.5) e saia quando vier "
                        f"(None, None, None).")

        def at_crash():
            return (kit.query(banco, "SELECT pedido_id FROM envios"), kit.query(banco, "SELECT message_id FROM inbox"),
                    sum(1 for e in log if e[0] == "ack"))

        with kit.recorded_sqlite() as dbs, kit.channel_calls() as log:
            log.max_requeues = 3 * len(MESSAGES_103)
            first = _Fault(at=2, on_crash=at_crash)
            crashed, _ = _crash_run(ctx, "consumir_pagamentos", (ctx.curso.url, banco), first, hung)
            expect(first.calls >= 1, "O seu consumidor não chamou `falha()`: chame falha() logo depois do commit "
                                     "de cada mensagem, antes do ack (é onde a verificação derruba o serviço).")
            expect(crashed or not first.raised,
                   "A verificação derrubou o seu serviço na 2ª chamada de falha() (falha() levanta uma exceção), "
                   "e o seu código a capturou e seguiu em frente: não capture o que falha() levanta (nada de "
                   "`except BaseException` ou `except:` em volta dela) — deixe a exceção sair da função; um "
                   "`finally: connection.close()` pode ficar.")
            expect(crashed, f"A verificação derrubaria o serviço na 2ª chamada de falha(), e o seu código chamou "
                            f"falha() {first.calls} vez(es) para {len(MESSAGES_103)} mensagens: chame falha() "
                            f"uma vez por mensagem, depois do commit e antes do ack.")
            effects, inbox, acks = first.seen
            expect(acks <= 1, "O seu consumidor deu o ack da mensagem antes de chamar falha(): a ordem é efeito e "
                              "inbox numa transação, commit, falha(), e só então o ack.")
            expect(("p-2",) in effects,
                   "Quando falha() foi chamada pela 2ª vez, o envio do pedido p-2 ainda não estava gravado (commit) "
                   "no banco: chame falha() depois do commit da transação.")
            expect(inbox, "Quando o serviço caiu, a tabela inbox estava vazia: grave o message_id de cada mensagem "
                          "(properties.message_id) na tabela inbox, na mesma transação do envio — é por ela que "
                          "o serviço reconhece uma mensagem que já tratou (uma reentrega, uma duplicata).")
            expect(("m-2",) in inbox,
                   "Quando o serviço caiu (depois do commit do envio do p-2), o message_id 'm-2' não estava na "
                   "tabela inbox: grave o message_id na MESMA transação do efeito (os dois INSERT e um commit "
                   "só) — senão uma queda entre os dois commits faz a reentrega gerar outro envio.")
            with kit.watch_connections() as left:
                try:
                    ctx.call("consumir_pagamentos", ctx.curso.url, banco, _Fault(), advice=_ADVICE_103,
                             on_timeout=hung)
                except kit.RequeueLoop:
                    kit.close_all(left.created)
                    kit.release_left_open()
                    raise AssertionError(_LOOP_103) from None
            expect(not left, kit.left_open_hint("consumir_pagamentos", left))
            kit.release_left_open()
            for transaction in (t for db in dbs for t in db.transactions):
                effect = any("INTO ENVIOS" in st for st in transaction)
                inbox_row = any("INTO INBOX" in st for st in transaction)
                expect(effect == inbox_row,
                       "O seu consumidor gravou " + ("o envio sem a linha da inbox" if effect else
                                                     "a linha da inbox sem o envio")
                       + " num commit: grave os dois na MESMA transação (os dois INSERT e um commit só) — "
                         "senão uma queda entre os dois commits perde o envio ou o repete na reentrega.")
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"Sobraram {ready} mensagem(ns) na fila '{self.queue}': dê o ack também das "
                           f"duplicadas (elas já foram tratadas).")
        acks = sum(1 for e in log if e[0] == "ack")
        expect(acks >= 3, f"O seu consumidor fez só {acks} basic_ack nas duas execuções: consuma com "
                          f"auto_ack=False e dê o ack de cada mensagem depois do commit (com auto_ack, as "
                          f"mensagens que já estavam com o serviço quando ele caiu se perdem).")
        rows = kit.query(banco, "SELECT pedido_id, COUNT(*) FROM envios GROUP BY pedido_id ORDER BY pedido_id")
        expected = [("p-1", 1), ("p-2", 1), ("p-3", 1)]
        expect(rows == expected,
               f"Depois de uma mensagem duplicada (m-2 publicada duas vezes) e de uma reentrega depois da queda, "
               f"a tabela envios tem {rows} (pedido, linhas), e devia ter {expected}: antes do efeito, procure o "
               f"message_id na inbox; se já estiver lá, não repita o efeito — só dê o ack.")
        inbox = sorted(r[0] for r in kit.query(banco, "SELECT message_id FROM inbox"))
        expect(inbox == ["m-1", "m-2", "m-3"],
               f"A tabela inbox tem {inbox}, e devia ter ['m-1', 'm-2', 'm-3'] (o message_id de cada mensagem "
               f"tratada, properties.message_id).")

    def verify(self, ctx):
        kit.expect_durable_queue(ctx, self.queue, "consumir_pagamentos")
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"Sobraram {ready} mensagem(ns) na fila '{self.queue}'.")


# --- 10.4 ----------------------------------------------------------------------------------------

SCHEMA_104 = ("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, "
              "chave TEXT NOT NULL, corpo TEXT NOT NULL, enviado INTEGER NOT NULL DEFAULT 0);")
ROWS_104 = [(f"o-{i}", "pedido.criado", _order(f"p-{i}")) for i in range(1, 5)]


class RelayOutbox(Exercise):
    """The outbox relay, a real process: publish each pending row with confirms, then mark it sent;
    SIGKILLed twice after a confirmed publish and before the mark, restarted, nothing lost."""

    id = "10.4"
    title = "O relay da outbox não perde nada quando cai."
    points = 3
    out = "ex104.saida"

    def snapshot(self, ctx):
        kit.shop_bus(ctx, {self.out: (["#"], None)})

    def run(self, ctx):
        from ...background import Background

        code = ctx.learner("CODIGO_RELAY", "texto")
        expect(isinstance(code, str), f"`CODIGO_RELAY` deve ser o texto do script do relay (uma string), e é "
                                      f"{type(code).__name__}.")
        try:
            compile(code, "relay.py", "exec")
        except SyntaxError as exc:
            raise AssertionError(f"O script em `CODIGO_RELAY` tem um erro de sintaxe na linha {exc.lineno}: "
                                 f"{exc.msg}.") from None
        expect("from falhas import falha" in code,
               "O script do relay deve importar o gancho da verificação: `from falhas import falha` (no topo).")
        script = SCHEMA_104 + "".join(
            f"INSERT INTO outbox (message_id, chave, corpo) VALUES ('{mid}', '{key}', '{json.dumps(body)}');"
            for mid, key, body in ROWS_104)
        banco = kit.scratch_db("pedidos.db", script)
        bg = Background(ctx.curso)
        try:
            bg.write("falhas.py", kit.FAULT_HOOK)
            bg.write("relay.py", code)
            for run_no, expected_sent in ((1, {"o-1"}), (2, {"o-1", "o-2"})):
                self._crash_once(ctx, bg, run_no, banco, expected_sent)
            worker = bg.process("relay-3", "relay.py", banco)
            worker.wait_for("@curso nunca", timeout=ctx.call_timeout)  # returns as soon as it ends
            if not kit.ended(worker):
                worker.kill()
                raise AssertionError(f"O relay não terminou em {ctx.call_timeout:g} s: ele deve publicar as linhas "
                                     f"pendentes e sair quando não houver mais linhas pendentes."
                                     + kit.raised_in(worker))
            expect(worker.returncode == 0, "O relay terminou com erro." + kit.raised_in(worker))
        finally:
            bg.stop_all(timeout=1, quiet=True)
        pending = kit.query(banco, "SELECT message_id FROM outbox WHERE enviado = 0")
        expect(not pending, f"Depois do último relay, as linhas {[p[0] for p in pending]} continuam com "
                            f"enviado = 0: o relay publica TODAS as linhas pendentes antes de sair.")
        self._published(ctx)

    def _crash_once(self, ctx, bg, run_no: int, banco: str, expected_sent: set) -> None:
        marked_before = {r[0] for r in kit.query(banco, "SELECT message_id FROM outbox WHERE enviado = 1")}
        worker = bg.process(f"relay-{run_no}", "relay.py", banco, env={"CURSO_FALHA_EM": "2"})
        reached = worker.wait_for("@curso falha 2", timeout=ctx.call_timeout)
        if not reached:
            hung = not kit.ended(worker)
            worker.kill()
            calls = worker.output().count("@curso falha ")
            expect(not hung, f"O relay não chegou à 2ª chamada de falha() em {ctx.call_timeout:g} s (chamou "
                             f"{calls} vez(es)) e continuava rodando." + kit.raised_in(worker))
            expect(worker.returncode == 0, "O relay terminou com erro." + kit.raised_in(worker))
            expect(calls, "O seu relay não chamou `falha()`: chame falha() depois de cada publish confirmado e "
                          "antes de marcar a linha como enviada.")
            raise AssertionError(f"O seu relay chamou falha() {calls} vez(es) e saiu: ele deve chamá-la uma vez "
                                 f"por linha publicada (a verificação o derruba na 2ª), e publicar todas as "
                                 f"pendentes.")
        marked = {r[0] for r in kit.query(banco, "SELECT message_id FROM outbox WHERE enviado = 1")}
        worker.kill()  # SIGKILL: after the publish, before the mark
        hooks = [line.split() for line in worker.lines() if line.startswith("@curso ")]
        expect(all(i and hooks[i - 1][1] == "publish" for i, h in enumerate(hooks) if h[1] == "falha"),
               "O seu relay chamou falha() antes do publish da linha: chame falha() depois de cada publish "
               "confirmado e antes de marcar a linha (é ali que a verificação o derruba).")
        published = [line.split() for line in worker.lines() if line.startswith("@curso publish")]
        again = sorted({p[2] for p in published} & marked_before)
        expect(not again, f"O relay publicou de novo {again}, que já estava(m) com enviado = 1: selecione só "
                          f"as linhas pendentes (WHERE enviado = 0 ORDER BY id).")
        expect(all(p[3] == "confirms=True" for p in published),
               "O seu relay publicou sem publisher confirms: chame channel.confirm_delivery() antes de publicar "
               "— só um publish confirmado pode marcar a linha como enviada.")
        last = published[-1][2] if published else None
        expect(last not in marked,
               f"Quando o relay caiu (logo depois de publicar {last!r}), a linha {last!r} já estava marcada como "
               f"enviada: marque enviado = 1 só DEPOIS do publish confirmado e de falha(); marcar antes perde o "
               f"evento se o relay cair entre as duas coisas.")
        expect(marked == expected_sent,
               f"Na {run_no}ª queda, as linhas marcadas como enviadas eram {sorted(marked)}, e deviam ser "
               f"{sorted(expected_sent)}: marque cada linha (UPDATE ... enviado = 1 e commit) logo depois de "
               f"publicá-la, na ordem do id.")

    def _published(self, ctx) -> None:
        ids = {mid: body for mid, _k, body in ROWS_104}
        messages = ctx.management.peek(self.out, 30)
        seen: dict[str, int] = {}
        for message in messages:
            props = kit.message_props(message)
            mid = props.get("message_id")
            expect(mid in ids, f"Chegou ao barramento uma mensagem com message_id {mid!r}, que não é o de nenhuma "
                               f"linha da outbox: publique com o message_id da linha — é ele que deixa a inbox do "
                               f"consumidor descartar a duplicata quando o relay republica depois de cair.")
            seen[mid] = seen.get(mid, 0) + 1
            expect(message.get("routing_key") == "pedido.criado",
                   f"O evento {mid} foi publicado com a chave {message.get('routing_key')!r}: use a chave da "
                   f"linha (coluna chave), na exchange '{EXCHANGE}'.")
            body = kit.expect_convention(message, f"O evento {mid}", "pedido.criado")
            expect(props.get("correlation_id") == ids[mid]["pedido_id"],
                   f"O evento {mid} veio com correlation_id {props.get('correlation_id')!r}, e devia levar o "
                   f"pedido_id do corpo, {ids[mid]['pedido_id']!r}.")
            expect(body == ids[mid], f"O evento {mid} leva {body!r}, e a linha da outbox tem {ids[mid]!r}: "
                                     f"publique o corpo da linha como está.")
        missing = sorted(set(ids) - set(seen))
        expect(not missing, f"Os eventos das linhas {missing} não chegaram à exchange '{EXCHANGE}' (a fila da "
                            f"verificação está ligada a ela com '#'): publique com exchange='{EXCHANGE}' — na "
                            f"exchange padrão (\"\") ou noutra, o evento não chega a quem assina o barramento.")
        expected = {"o-1": 1, "o-2": 2, "o-3": 2, "o-4": 1}
        expect(seen == expected, f"Cada linha chegou ao barramento {seen} vez(es), e o esperado (duas quedas depois "
                                 f"de publicar o-2 e o-3, antes de marcá-las) é {expected}.")

    def verify(self, ctx):
        messages = ctx.management.peek(self.out, 30)
        ids = sorted(kit.message_props(m).get("message_id") or "" for m in messages)
        expected = ["o-1", "o-2", "o-2", "o-3", "o-3", "o-4"]
        expect(ids == expected, f"Os eventos do relay no barramento têm os message_id {ids}, e deviam ser {expected}.")
        for message in messages:
            kit_ok = kit.is_persistent(message)
            expect(kit_ok, "Há eventos do relay que não são persistentes.")
