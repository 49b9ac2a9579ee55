"""Chapter 13 exercises: the shop's order saga end to end.

13.1 runs the real services of the shop (`course_utils.loja`: pedidos, relay, estoque, pagamentos) as
processes in the learner's vhost until the payment rejections wait in Estoque's queue, then calls the
learner's compensating step in the kernel against the Estoque service's own SQLite file. 13.2 runs the
learner's payment service as a script, SIGKILLed by the check at the fault hook (`kit.FAULT_HOOK`) and
started again. 13.3 and 13.4 call the learner's consumer in the kernel with a function of the check's
(a carrier that fails, a notifier that fails) that records every call and its time.

RabbitMQ 4.0 and later ignore an `x-death` header that a client republishes (measured: on 4.0.5 a message
republished into a TTL wait queue comes back with `count` 1 every time; 3.10.8 counts on). In 13.3 the
check drops `x-death` from what the learner's code republishes, so that a retry counted by `x-death`
loops on 3.10 as it does on 4.x. A quorum queue with `x-delivery-limit` 3 delivers a message that is
always requeued 4 times (the first delivery and 3 redeliveries) and dead-letters it at its 4th return,
with `x-death` reason `delivery_limit`: measured alike on 3.10.8 and 4.0.5; a classic queue refuses the
argument (406 PRECONDITION_FAILED) on both.
"""
from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import uuid

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ...loja import catalogo, contratos
from .. import kit
from ..checks import Exercise, expect
from ..pikawatch import PikaWatch, call_watched

EXCHANGE = contratos.EXCHANGE
DLX = kit.SHOP_DLX


class _TooMany(BaseException):
    """Raised inside the learner's call by a function of the check's once the learner's code calls it
    more often (or sooner) than a right answer can: a retry loop. A BaseException, so that no
    `except Exception` of the learner's swallows it."""

    def __init__(self, why: str, hint: str | None = None, pid: str | None = None) -> None:
        super().__init__(why)
        self.why, self.hint, self.pid = why, hint, pid


def _items_key(itens) -> list:
    return sorted((i.get("sku"), i.get("quantidade")) for i in itens or [] if isinstance(i, dict))


def _corr(message: dict) -> str | None:
    """The order a peeked event is about: the body's pedido_id, else its correlation_id."""
    try:
        body = json.loads(kit.payload_text(message))
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("pedido_id"), str):
        return body["pedido_id"]
    return kit.message_props(message).get("correlation_id")


def _declared(q: dict) -> dict:
    """A classic queue's arguments as declared: RabbitMQ 4.x lists `x-queue-type: classic` even when the
    declaration did not give it."""
    arguments = dict(q.get("arguments") or {})
    if arguments.get("x-queue-type") == "classic":
        del arguments["x-queue-type"]
    return arguments


def _holds(pids) -> str:
    """'tem p-3 e p-9' / 'está vazia', for a hint about a queue's messages."""
    return f"tem {', '.join(map(str, pids))}" if pids else "está vazia"


def _services_log(bg, names) -> str:
    tail = [f"[{n}] {line}" for n in names if n in bg.workers for line in bg[n].lines()[-3:]]
    return " | ".join(tail[-8:])


# --- 13.1 ----------------------------------------------------------------------------------------

STOCK_131 = {"camisa": 10, "caneca": 5, "bone": 3, "tenis": 2}
LIMIT_131 = 200  # pagamentos --rejeitar-acima
ORDERS_131 = [  # sent in this order: p-1 has no stock, p-2 and p-5 are paid, p-3 and p-4 refused
    ("p-1", [{"sku": "bone", "quantidade": 5}]),
    ("p-2", [{"sku": "caneca", "quantidade": 2}]),
    ("p-3", [{"sku": "tenis", "quantidade": 1}]),
    ("p-4", [{"sku": "camisa", "quantidade": 4}, {"sku": "bone", "quantidade": 1}]),
    ("p-5", [{"sku": "camisa", "quantidade": 1}]),
]
RELEASED_131 = {"p-3": ORDERS_131[2][1], "p-4": ORDERS_131[3][1]}
KEPT_131 = ["p-2", "p-5"]
NEVER_RESERVED_131 = "p-1"
DUPLICATE_131 = "p-4"
EXPECTED_STOCK_131 = {"camisa": 9, "caneca": 3, "bone": 3, "tenis": 2}
SERVICE_QUEUES_131 = [q for base in ("pedidos.comandos", "pedidos.eventos", "estoque.pedidos", "pagamentos.reservas")
                      for q in (base, f"{base}.dlq")]
SERVICES_131 = ("pedidos", "relay", "estoque", "pagamentos")


def _no_reservation_advice(exc: BaseException) -> str | None:
    if isinstance(exc, (TypeError, KeyError)) and "None" in str(exc) or isinstance(exc, json.JSONDecodeError):
        return ("Uma rejeição pode ser de um pedido que nunca teve reserva (o p-1 ficou sem estoque): a consulta "
                "à tabela reservas não acha nada (fetchone() devolve None) e não há o que devolver — só grave o "
                "message_id na inbox e dê o ack.")
    return None


class Compensacao(Exercise):
    """Estoque's compensating step in the real saga: a rejected payment gives the reserved stock
    back, once, in one transaction with the inbox row, then announces estoque.liberado."""

    id = "13.1"
    title = "A compensação da saga devolve o estoque, uma vez só."
    points = 3
    queue = "estoque.pagamentos"
    out = "ex131.saida"

    def snapshot(self, ctx):
        kit.shop_bus(ctx, {self.queue: (["pagamento.rejeitado"], kit.shop_dead_letter(self.queue)),
                           self.out: (["estoque.liberado"], None)})

    # the saga ------------------------------------------------------------------------------------
    def _saga(self, ctx, bg) -> tuple[str, dict[str, dict]]:
        """Start the shop's services, send the orders as commands and wait until the two payment
        rejections wait in the queue; the Estoque's database and {pedido_id: rejection message}."""
        kit.reset_topology(ctx, queues=SERVICE_QUEUES_131)
        dados = bg.folder / "dados"
        stock = ",".join(f"{sku}={n}" for sku, n in STOCK_131.items())
        workers = [bg.module("pedidos", "course_utils.loja.pedidos", "--dados", dados),
                   bg.module("relay", "course_utils.loja.relay", "--dados", dados),
                   bg.module("estoque", "course_utils.loja.estoque", "--dados", dados, "--estoque", stock),
                   bg.module("pagamentos", "course_utils.loja.pagamentos", "--dados", dados, "--rejeitar-acima", LIMIT_131)]
        for worker in workers:
            expect(worker.wait_for("pronto", timeout=20),
                   f"O serviço {worker.name} da loja não ficou pronto em 20 s (a verificação sobe os serviços "
                   f"do capítulo para rodar a saga): {' | '.join(worker.lines()[-3:]) or 'sem saída'}. Rode a "
                   f"verificação de novo.")
        with ctx.curso.connect() as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            for pedido_id, itens in ORDERS_131:
                pedido = {"pedido_id": pedido_id, "cliente": "ana", "itens": itens, "total": catalogo.valor(itens)}
                channel.basic_publish(
                    exchange="", routing_key="pedidos.comandos", body=json.dumps(pedido),
                    properties=pika.BasicProperties(
                        delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
                        type="CriarPedido", message_id=str(uuid.uuid4()), correlation_id=pedido_id))
            deadline = time.monotonic() + 15
            waiting = 0
            while time.monotonic() < deadline:
                waiting = channel.queue_declare(queue=self.queue, passive=True).method.message_count
                if waiting >= len(RELEASED_131):
                    break
                time.sleep(0.05)
        done = bg["estoque"].wait_for("publicou estoque.", timeout=10, count=len(ORDERS_131))
        expect(waiting == len(RELEASED_131) and done,
               f"A saga não chegou às {len(RELEASED_131)} rejeições de pagamento na fila '{self.queue}' "
               f"(chegaram {waiting}). Últimas linhas dos serviços: {_services_log(bg, SERVICES_131)}")
        rejections = {}
        for message in ctx.management.peek(self.queue, 10):
            rejections[_corr(message)] = message
        expect(set(rejections) == set(RELEASED_131),
               f"As rejeições na fila '{self.queue}' são de {sorted(map(str, rejections))}, e a saga devia rejeitar "
               f"{sorted(RELEASED_131)}: rode a verificação de novo.")
        return str(dados / "estoque.db"), rejections

    def run(self, ctx):
        from ...background import Background

        fn = ctx.learner("compensar")
        expect(callable(fn), f"`compensar` deveria ser uma função, mas é {type(fn).__name__}.")
        bg = Background(ctx.curso)
        stopper = None
        try:
            banco, rejections = self._saga(ctx, bg)
            duplicate = rejections[DUPLICATE_131]
            props = kit.message_props(duplicate)
            ids = {pid: kit.message_props(m).get("message_id") for pid, m in rejections.items()}
            ids[NEVER_RESERVED_131] = str(uuid.uuid4())
            kit.publish_events(ctx, [
                ("pagamento.rejeitado", kit.payload_text(duplicate).encode(),
                 kit.event_properties(DUPLICATE_131, "pagamento.rejeitado", props.get("message_id"))),
                ("pagamento.rejeitado", {"versao": 1, "pedido_id": NEVER_RESERVED_131, "motivo": "cartão recusado"},
                 kit.event_properties(NEVER_RESERVED_131, "pagamento.rejeitado", ids[NEVER_RESERVED_131]))])
            # the services have done their part: they stop while the learner's step runs
            stopper = threading.Thread(target=bg.stop_all, kwargs={"timeout": 3, "quiet": True}, daemon=True)
            stopper.start()
            self._call(ctx, banco, ids)
        finally:
            if stopper is not None:
                stopper.join(timeout=10)
            bg.stop_all(timeout=2, quiet=True)

    def _call(self, ctx, banco: str, ids: dict[str, str]) -> None:
        early: list[tuple[str, str]] = []  # (pedido_id, what the ack came before)
        watch = PikaWatch()

        def on_event(what, detail):
            if what != "settle" or detail.kind != "basic_ack":
                return
            for body in detail.bodies:
                try:
                    pid = json.loads(body).get("pedido_id")
                except (ValueError, AttributeError):
                    continue
                if pid in ids and not kit.query(banco, "SELECT 1 FROM inbox WHERE message_id = ?", ids[pid]):
                    early.append((pid, "commit"))
                elif pid in RELEASED_131 and not any(e[0] == "publish" and _published_for(e) == pid for e in log):
                    early.append((pid, "publish"))

        watch.on_event = on_event
        kit.release_left_open()
        try:
            with kit.recorded_sqlite() as dbs, kit.channel_calls() as log, kit.watch_connections() as left:
                call_watched(ctx, watch, "compensar", ctx.curso.url, banco, advice=_no_reservation_advice,
                             on_timeout=lambda: self._hung(ctx))
            expect(not left, kit.left_open_hint("compensar", left))
        finally:
            kit.release_left_open()
        declared = {(e[0], e[2]) for e in log if e[0] in ("queue_declare", "queue_bind")}
        missing = [what for what, entry in (
            (f"a fila '{self.queue}' (queue_declare)", ("queue_declare", self.queue)),
            (f"a ligação dela à exchange '{EXCHANGE}' pela chave pagamento.rejeitado (queue_bind)",
             ("queue_bind", self.queue))) if entry not in declared]
        expect(not missing, f"A sua função não declarou {' nem '.join(missing)}: declare de novo, com os mesmos "
                            f"argumentos (a dead-letter da loja), a topologia de que o passo depende antes de "
                            f"consumir — num broker novo, ninguém a teria criado antes.")
        expect(not any(e[0] == "queue_declare" and e[2] == self.queue and e[3].get("passive") for e in log),
               f"A sua função declarou a fila '{self.queue}' com passive=True: uma declaração passiva só confere que a "
               f"fila existe, e num broker novo (ninguém a criou antes) ela falha. Declare-a de verdade, "
               f"durable=True e com os argumentos da dead-letter da loja.")
        expect(not watch.auto_ack(),
               "A sua função consumiu com auto_ack=True: a rejeição sai da fila antes do commit, e uma queda no meio "
               "perde a compensação (o estoque fica preso para sempre). Consuma com auto_ack=False e dê o ack "
               "depois do commit e do publish.")
        self._bound_only(ctx)
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"Depois de `compensar` voltar, {ready} rejeição(ões) continuam na fila '{self.queue}': "
                           f"dê o ack de cada uma (ch.basic_ack(delivery_tag=method.delivery_tag)), também das "
                           f"duplicadas e das que não liberaram nada.")
        self._no_dead(ctx)
        self._committed(dbs, banco, ids)
        recorded = {r[0] for r in kit.query(banco, "SELECT message_id FROM inbox")}
        # an ack before its inbox row is an early ack only if the row came later (no row: the inbox hint)
        before_commit = sorted({pid for pid, what in early if what == "commit" and ids[pid] in recorded})
        expect(not before_commit,
               f"A sua função deu o ack da rejeição de {', '.join(before_commit)} antes do commit (quando o ack "
               f"chegou, o message_id dela não estava gravado na inbox): se o serviço cair entre o ack e o commit, "
               f"a compensação se perde. Faça a transação e o commit primeiro, publique, e só então o ack.")
        before_publish = sorted({pid for pid, what in early if what == "publish"})
        expect(not before_publish,
               f"A sua função deu o ack da rejeição de {', '.join(before_publish)} antes de publicar o "
               f"estoque.liberado: se o serviço cair entre o ack e o publish, o evento nunca sai. Publique e só "
               f"então dê o ack.")
        early_publish = [_published_for(e) for e in log if e[0] == "publish" and e[6]]
        expect(not early_publish,
               f"A sua função publicou o estoque.liberado de {', '.join(map(str, early_publish))} antes do commit "
               f"da devolução no banco: se ela cair entre o publish e o commit, o evento anuncia uma devolução que "
               f"não aconteceu. Commit primeiro, depois o publish.")
        self._events(ctx, ids)
        self._one_transaction(dbs)
        self._database(banco, ids)

    def _bound_only(self, ctx) -> None:
        keys = sorted(b["routing_key"] for b in kit.bindings_from(ctx, EXCHANGE) if b["destination"] == self.queue)
        extra = [k for k in keys if k != "pagamento.rejeitado"]
        expect(not extra,
               f"A fila '{self.queue}' está ligada a '{EXCHANGE}' também pela(s) chave(s) {extra}: ligue-a só pela chave "
               f"pagamento.rejeitado — com {extra[0] if extra else ''!r}, o Estoque receberia também os "
               f"pagamento.aprovado e devolveria o estoque de pedidos PAGOS.")

    def _no_dead(self, ctx) -> None:
        dead = [_corr(m) for m in _peek(ctx, f"{self.queue}.dlq")]
        expect(not dead,
               f"A DLQ '{self.queue}.dlq' {_holds(dead)}: a sua função rejeitou (basic_reject ou basic_nack com "
               f"requeue=False) rejeições que devia confirmar. Uma duplicada ou uma rejeição sem reserva não é erro: "
               f"dê o ack de cada uma (ch.basic_ack(delivery_tag=method.delivery_tag)) — só o ack a tira da fila sem "
               f"mandá-la para a DLQ.")

    @staticmethod
    def _committed(dbs, banco: str, ids: dict[str, str]) -> None:
        """Writes no COMMIT ever covered: autocommit (each statement durable alone) or never committed."""
        if not any(db.current for db in dbs):
            return
        recorded = {r[0] for r in kit.query(banco, "SELECT message_id FROM inbox")}
        expect(not recorded & set(ids.values()),
               "A sua função gravou no banco fora de uma transação: com isolation_level=None (autocommit) cada "
               "comando vira um commit sozinho, e o `with db:` não junta nada — uma queda no meio devolve o estoque "
               "sem gravar a inbox (e a reentrega devolve de novo). Abra com sqlite3.connect(banco), sem "
               "isolation_level=None, e faça as três escritas num `with db:` (um commit).")
        raise AssertionError("A sua função nunca fez o commit das escritas no banco (a conexão fechou e desfez tudo): "
                             "faça as escritas dentro de um `with db:` — ele faz o commit no fim do bloco.")

    def _hung(self, ctx) -> str:
        counts = kit.exact_counts(ctx, self.queue) or (0, 0)
        return (f"`compensar` não voltou em {ctx.call_timeout:g} s ({counts[0]} rejeição(ões) ainda prontas na fila). "
                f"Consuma com channel.consume('{self.queue}', inactivity_timeout=1) e saia do laço quando vier "
                f"(None, None, None).")

    def _events(self, ctx, ids: dict[str, str]) -> None:
        messages = ctx.management.peek(self.out, 20)
        by_pid: dict[str, list[dict]] = {}
        for message in messages:
            by_pid.setdefault(_corr(message), []).append(message)
        expect(NEVER_RESERVED_131 not in by_pid,
               f"A sua função publicou estoque.liberado para o {NEVER_RESERVED_131}, que nunca teve reserva (ficou "
               f"sem estoque): publique só quando algo foi devolvido.")
        strangers = sorted(map(str, set(by_pid) - set(RELEASED_131)))
        expect(not strangers, f"A sua função publicou estoque.liberado para {strangers}, e só os pedidos com pagamento "
                              f"rejeitado e reserva ({sorted(RELEASED_131)}) liberam estoque.")
        twice = sorted(pid for pid, found in by_pid.items() if len(found) > 1)
        expect(not twice,
               f"O estoque.liberado de {', '.join(twice)} chegou {len(by_pid[twice[0]]) if twice else 0} vezes: a "
               f"rejeição do {DUPLICATE_131} chegou duplicada (o mesmo message_id, como quando o Pagamentos "
               f"republica) e foi liberada de novo. Antes de tudo, procure o message_id na inbox: se já estiver lá, "
               f"só dê o ack.")
        missing = sorted(set(RELEASED_131) - set(by_pid))
        expect(not missing,
               f"Não chegou ao barramento o estoque.liberado de {', '.join(missing)} (a verificação lê uma fila ligada "
               f"a '{EXCHANGE}' pela chave estoque.liberado): publique na exchange '{EXCHANGE}' com a chave "
               f"estoque.liberado depois de devolver a reserva.")
        for pid, (message,) in sorted(by_pid.items()):
            what = f"O estoque.liberado do {pid}"
            body = kit.expect_convention(message, what, "estoque.liberado")
            props = kit.message_props(message)
            expect(props.get("correlation_id") == pid,
                   f"{what} veio com correlation_id {props.get('correlation_id')!r}: o correlation_id é o pedido_id, "
                   f"copiado da rejeição (properties.correlation_id).")
            expect(props.get("message_id") not in ids.values(),
                   f"{what} reusa o message_id da rejeição: cada mensagem nova leva um message_id novo "
                   f"(str(uuid.uuid4())); o que se copia é o correlation_id.")
            expect(_items_key(body.get("itens")) == _items_key(RELEASED_131[pid]),
                   f"{what} leva itens {body.get('itens')!r}, e a reserva do pedido era {RELEASED_131[pid]!r}: "
                   f"publique os itens que você devolveu (os da reserva, reservas.itens).")

    @staticmethod
    def _one_transaction(dbs) -> None:
        """Each commit that gives stock back or deletes a reservation also holds the other two writes,
        where the learner's code makes them at all (a write it never makes is the database's hint)."""
        def parts(transaction) -> dict[str, bool]:
            return {"a devolução das quantidades (UPDATE estoque)":
                        any(st.startswith("UPDATE") and "ESTOQUE" in st for st in transaction),
                    "a remoção da reserva (DELETE FROM reservas)":
                        any(st.startswith("DELETE") and "RESERVAS" in st for st in transaction),
                    "a linha da inbox (INSERT INTO inbox)": any("INTO INBOX" in st for st in transaction)}

        transactions = [t for db in dbs for t in db.transactions]
        made = {what for t in transactions for what, done in parts(t).items() if done}
        for transaction in transactions:
            done = parts(transaction)
            if any(list(done.values())[:2]):
                lacking = [what for what, present in done.items() if not present and what in made]
                expect(not lacking,
                       f"A sua função fez um commit sem {' nem '.join(lacking)}: as três coisas vão numa transação só "
                       f"(um commit) — senão uma queda entre dois commits devolve sem registrar a mensagem (e a "
                       f"reentrega devolve de novo) ou registra sem devolver.")

    @staticmethod
    def _database(banco: str, ids: dict[str, str]) -> None:
        stock = dict(kit.query(banco, "SELECT sku, quantidade FROM estoque"))
        expect(stock == EXPECTED_STOCK_131,
               f"Depois da compensação, a tabela estoque tem {stock}, e devia ter {EXPECTED_STOCK_131} (as reservas "
               f"dos pedidos pagos, p-2 e p-5, continuam; as do p-3 e do p-4 voltam ao estoque): devolva exatamente "
               f"as quantidades da reserva (reservas.itens), uma vez por pedido.")
        kept = sorted(r[0] for r in kit.query(banco, "SELECT pedido_id FROM reservas"))
        expect(kept == KEPT_131,
               f"A tabela reservas ficou com {kept}, e devia ficar com {KEPT_131}: apague a reserva do pedido que "
               f"você liberou (DELETE FROM reservas WHERE pedido_id = ?), na mesma transação da devolução — senão "
               f"o estoque fica devolvido e reservado ao mesmo tempo.")
        recorded = {r[0] for r in kit.query(banco, "SELECT message_id FROM inbox")}
        lacking = sorted(pid for pid, mid in ids.items() if mid not in recorded)
        expect(not lacking,
               f"A inbox não tem o message_id da rejeição de {', '.join(lacking)}: grave o message_id de cada "
               f"rejeição tratada (properties.message_id), também das que não liberaram nada, na mesma transação.")

    def verify(self, ctx):
        q = kit.expect_durable_queue(ctx, self.queue, "compensar")
        expect(_declared(q) == kit.shop_dead_letter(self.queue),
               f"A fila '{self.queue}' tem os argumentos {q.get('arguments')}, e devia ter os da dead-letter da loja, "
               f"{kit.shop_dead_letter(self.queue)}.")
        self._bound_only(ctx)
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"A fila '{self.queue}' ainda tem {ready} rejeição(ões): a compensação não confirmou todas.")
        self._no_dead(ctx)
        messages = ctx.management.peek(self.out, 20)
        got = sorted(str(_corr(m)) for m in messages)
        expect(got == sorted(RELEASED_131),
               f"Os estoque.liberado no barramento são de {got}, e deviam ser um de cada: {sorted(RELEASED_131)}.")
        for message in messages:
            kit.expect_convention(message, f"O estoque.liberado do {_corr(message)}", "estoque.liberado")
            expect(kit.message_props(message).get("correlation_id") == _corr(message),
                   f"O estoque.liberado do {_corr(message)} não leva o pedido_id como correlation_id.")


def _published_for(entry) -> str | None:
    """The order a logged publish was about: its body's pedido_id, else its correlation_id."""
    body, properties = entry[5], entry[4]
    try:
        decoded = json.loads(body)
        if isinstance(decoded, dict) and isinstance(decoded.get("pedido_id"), str):
            return decoded["pedido_id"]
    except (TypeError, ValueError):
        pass
    return getattr(properties, "correlation_id", None)


# --- 13.2 ----------------------------------------------------------------------------------------

SCHEMA_132 = "CREATE TABLE cobrancas (pedido_id TEXT NOT NULL, valor REAL NOT NULL);"
RESERVAS_132 = [  # (message_id, pedido_id, itens): r-4 is p-2's reservation again, under a new message_id
    ("r-1", "p-1", [{"sku": "camisa", "quantidade": 2}]),
    ("r-2", "p-2", [{"sku": "caneca", "quantidade": 1}, {"sku": "bone", "quantidade": 1}]),
    ("r-3", "p-3", [{"sku": "tenis", "quantidade": 1}]),
    ("r-4", "p-2", [{"sku": "caneca", "quantidade": 1}, {"sku": "bone", "quantidade": 1}]),
]
VALUES_132 = {pid: catalogo.valor(itens) for _mid, pid, itens in RESERVAS_132}


class PagamentosIdempotentes(Exercise):
    """The payment service, a real process SIGKILLed between the charge's commit and the publish:
    charged once per order (keyed by pedido_id), every order's result published in the end."""

    id = "13.2"
    title = "O Pagamentos não cobra duas vezes, nem quando cai."
    points = 3
    queue = "pagamentos.reservas"
    out = "ex132.saida"

    def snapshot(self, ctx):
        kit.shop_bus(ctx, {self.queue: (["estoque.reservado"], kit.shop_dead_letter(self.queue)),
                           self.out: (["pagamento.*"], None)})

    def run(self, ctx):
        from ...background import Background

        code = ctx.learner("CODIGO_PAGAMENTOS", "texto")
        expect(isinstance(code, str), f"`CODIGO_PAGAMENTOS` deve ser o texto do script do Pagamentos (uma string), e "
                                      f"é {type(code).__name__}.")
        try:
            compile(code, "pagamentos.py", "exec")
        except SyntaxError as exc:
            raise AssertionError(f"O script em `CODIGO_PAGAMENTOS` tem um erro de sintaxe na linha {exc.lineno}: "
                                 f"{exc.msg}.") from None
        expect("from falhas import falha" in code,
               "O script do Pagamentos deve importar o gancho da verificação: `from falhas import falha` (no topo).")
        banco = kit.scratch_db("pagamentos.db", SCHEMA_132)
        kit.publish_events(ctx, [("estoque.reservado", {"versao": 1, "pedido_id": pid, "itens": itens},
                                  kit.event_properties(pid, "estoque.reservado", mid))
                                 for mid, pid, itens in RESERVAS_132])
        bg = Background(ctx.curso)
        try:
            bg.write("falhas.py", kit.FAULT_HOOK)
            bg.write("pagamentos.py", code)
            self._crash(ctx, bg, banco)
            worker = bg.process("pagamentos-2", "pagamentos.py", banco)
            if not self._ends(ctx, worker):
                worker.kill()
                requeued = _requeues(kit.hook_lines(worker))
                expect(not requeued,
                       f"O Pagamentos não terminou depois de subir de novo: ele devolveu reservas à fila com "
                       f"requeue=True {requeued} vezes — a reserva volta na hora, ele a pega de novo, e a fila nunca "
                       f"fica vazia (um laço). Um pedido já cobrado não é erro: não cobre de novo, mas chame falha(), "
                       f"publique o resultado e dê o ack.")
                raise AssertionError(f"O Pagamentos não terminou depois de subir de novo (a fila já estava vazia, e ele "
                                     f"seguia parado, esperando): ele deve sair quando a fila ficar 1 s sem mensagens (channel.consume(..., "
                                     f"inactivity_timeout=1) e sair do laço quando vier (None, None, None))."
                                     + kit.raised_in(worker))
            expect(worker.returncode == 0, "O Pagamentos terminou com erro ao subir de novo." + kit.raised_in(worker))
            hooks = kit.hook_lines(worker)
            seen = False
            for hook in hooks:
                if hook[1] == "falha":
                    seen = True
                elif hook[1] == "publish":
                    expect(seen, "Depois de subir de novo, o seu Pagamentos publicou o resultado de uma reserva sem "
                                 "chamar falha() antes: chame falha() para toda reserva, também para as de pedidos já "
                                 "cobrados (entre o commit, ou a consulta, e o publish).")
                    seen = False
        finally:
            bg.stop_all(timeout=1, quiet=True)
        expect(all(h[3] == "confirms=True" for h in hooks if h[1] == "publish"),
               "Depois de subir de novo, o seu Pagamentos publicou sem publisher confirms: chame "
               "channel.confirm_delivery() antes de publicar.")
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"Sobraram {ready} reserva(s) na fila '{self.queue}': dê o ack de cada uma, também das que "
                           f"já estavam cobradas (depois de publicar o resultado).")
        self._charges(banco)
        self._published(ctx, kernel=True)

    def _ends(self, ctx, worker, quiet: float = 4.0) -> bool:
        """True once the script ended by itself; False if it kept running `quiet` s after its last line
        with the queue empty (a consumer with no idle exit), or past the time limit."""
        deadline = time.monotonic() + ctx.call_timeout
        while time.monotonic() < deadline:
            if not worker.alive:
                return kit.ended(worker)
            records = worker.records()
            last = records[-1][0] if records else worker.started_at
            if time.time() - last > quiet and kit.counts_of(ctx, self.queue)[0] == 0:
                return False
            if _requeues(kit.hook_lines(worker)) > 20:
                return False
            time.sleep(0.1)
        return kit.ended(worker, grace=0.1)

    def _crash(self, ctx, bg, banco: str) -> None:
        worker = bg.process("pagamentos-1", "pagamentos.py", banco, env={"CURSO_FALHA_EM": "2"})
        reached = worker.wait_for("@curso falha 2", timeout=ctx.call_timeout)
        if not reached:
            hung = not kit.ended(worker)
            worker.kill()
            calls = worker.output().count("@curso falha ")
            expect(not hung, f"O Pagamentos não chegou à 2ª chamada de falha() em {ctx.call_timeout:g} s (chamou "
                             f"{calls} vez(es)) e continuava rodando." + kit.raised_in(worker))
            expect(worker.returncode == 0, "O Pagamentos terminou com erro." + kit.raised_in(worker))
            expect(calls, "O seu Pagamentos não chamou `falha()`: chame falha() depois do commit de cada cobrança e "
                          "antes de publicar o resultado.")
            raise AssertionError(f"O seu Pagamentos chamou falha() {calls} vez(es) e saiu: ele deve chamá-la uma vez por "
                                 f"reserva (a verificação o derruba na 2ª), e consumir todas as reservas da fila.")
        charged = kit.query(banco, "SELECT pedido_id FROM cobrancas")
        worker.kill()  # SIGKILL: after the charge's commit, before the publish
        hooks = kit.hook_lines(worker)
        expect(not any(h[1] == "consume" and h[2] == "auto_ack=True" for h in hooks),
               "O seu Pagamentos consumiu com auto_ack=True: a reserva que ele tinha em mãos quando caiu sumiu da "
               "fila, e o pedido ficou cobrado e sem resultado para sempre. Consuma com auto_ack=False e dê o ack "
               "depois do publish.")
        until_crash = [h for h in hooks if h[1] in ("falha", "publish", "ack", "nack", "reject")]
        kinds = [h[1] for h in until_crash]
        first = kinds.index("falha")
        expect(kinds[:first].count("publish") == 0 and kinds.count("publish") <= 1,
               "O seu Pagamentos publicou o resultado antes de chamar falha(): a ordem é cobrança e commit, falha(), "
               "publish, ack (a verificação o derruba em falha(), entre o commit e o publish — o pior momento).")
        expect(kinds.count("publish") == 1,
               "Entre a 1ª e a 2ª chamada de falha(), o seu Pagamentos não publicou o pagamento.aprovado do 1º "
               "pedido: depois de falha(), publique o resultado e dê o ack, antes de passar à próxima reserva.")
        expect(kinds.count("ack") <= 1 and "ack" not in kinds[:kinds.index("publish")],
               "O seu Pagamentos deu o ack da reserva antes de publicar o resultado: se ele cair entre o ack e o "
               "publish, o pedido fica cobrado e sem pagamento.aprovado. Publique primeiro (com confirms), depois o ack.")
        expect(all(h[3] == "confirms=True" for h in until_crash if h[1] == "publish"),
               "O seu Pagamentos publicou sem publisher confirms: chame channel.confirm_delivery() antes de publicar — "
               "só um publish confirmado pode dar o ack da reserva.")
        expect(("p-2",) in charged,
               "Quando a verificação derrubou o Pagamentos (na 2ª chamada de falha()), a cobrança do 2º pedido (p-2) não "
               "estava gravada no banco: faça o INSERT e o commit da cobrança antes de chamar falha().")

    @staticmethod
    def _charges(banco: str) -> None:
        rows = kit.query(banco, "SELECT pedido_id, valor FROM cobrancas ORDER BY rowid")
        by_pid: dict[str, list[float]] = {}
        for pid, valor in rows:
            by_pid.setdefault(pid, []).append(valor)
        twice = by_pid.get("p-2", [])
        expect(len(twice) <= 2,
               f"O p-2 foi cobrado {len(twice)} vezes (a reserva reentregue depois da queda e outra reserva do mesmo "
               f"pedido): antes de cobrar, procure o pedido_id na tabela cobrancas (SELECT); se já estiver lá, não "
               f"cobre de novo — só publique o resultado e dê o ack.")
        expect(len(twice) <= 1,
               "O p-2 foi cobrado 2 vezes: a segunda reserva do p-2 chegou com OUTRO message_id (o Estoque a "
               "republicou), e uma inbox por message_id não a reconhece. A chave de idempotência de um pagamento é o "
               "pedido_id: antes de cobrar, procure o pedido_id em cobrancas.")
        expected = {pid: [valor] for pid, valor in VALUES_132.items()}
        expect(by_pid == expected,
               f"A tabela cobrancas tem {by_pid} (pedido: valores), e devia ter {expected}: uma cobrança por pedido, "
               f"no valor catalogo.valor(itens) da reserva.")

    def _published(self, ctx, kernel: bool) -> None:
        messages = ctx.management.peek(self.out, 30)
        by_pid: dict[str, list[dict]] = {}
        for message in messages:
            by_pid.setdefault(_corr(message), []).append(message)
        expect(messages,
               f"Nenhum pagamento.aprovado chegou ao barramento (a verificação lê uma fila ligada a '{EXCHANGE}' pela "
               f"chave pagamento.*): publique na exchange '{EXCHANGE}', com routing_key='pagamento.aprovado'. Na exchange "
               f"padrão (\"\"), a chave é o nome de uma fila, e não há fila 'pagamento.aprovado': a mensagem é descartada.")
        refused = [_corr(m) for m in messages if m.get("routing_key") != "pagamento.aprovado"]
        expect(not refused, f"Chegou ao barramento {sorted(map(str, refused))} com outra chave que não "
                            f"pagamento.aprovado: todas as reservas desta verificação são aprovadas.")
        missing = sorted(set(VALUES_132) - set(by_pid))
        if kernel:
            expect("p-2" not in missing,
                   "O p-2 nunca recebeu o seu pagamento.aprovado: o Pagamentos caiu depois de cobrá-lo e antes de "
                   "publicar, e quando a reserva voltou (reentregue) ele viu que já estava cobrado e não publicou. Na "
                   "reentrega de um pedido já cobrado, não cobre — mas publique o resultado (é ele que se perdeu) e "
                   "dê o ack.")
        expect(not missing, f"Não chegou ao barramento o pagamento.aprovado de {', '.join(missing)}: publique-o em "
                            f"'{EXCHANGE}' com a chave pagamento.aprovado, um por reserva tratada.")
        strangers = sorted(map(str, set(by_pid) - set(VALUES_132)))
        expect(not strangers, f"Chegaram pagamentos de pedidos que não estavam na fila: {strangers}.")
        reservation_ids = {mid for mid, _pid, _itens in RESERVAS_132}
        result_ids: dict[str, str] = {}
        for pid, found in sorted(by_pid.items()):
            mids = sorted({str(kit.message_props(m).get("message_id")) for m in found})
            expect(len(mids) == 1,
                   f"Os {len(found)} pagamento.aprovado do {pid} chegaram com message_ids diferentes ({', '.join(mids)}): "
                   f"o resultado de um pedido é um só, publicado de novo a cada reentrega — publique-o sempre com o mesmo "
                   f"message_id (str(uuid.uuid5(uuid.NAMESPACE_URL, 'pagamentos:' + pedido_id))), para que a inbox de "
                   f"quem o consome descarte a cópia.")
            other = next((p for p, mid in result_ids.items() if mid == mids[0]), None)
            expect(other is None,
                   f"O pagamento.aprovado do {pid} e o do {other} têm o mesmo message_id ({mids[0]}): cada pedido tem o "
                   f"seu (derive-o do pedido_id), senão a inbox de quem consome descarta o resultado de outro pedido.")
            result_ids[pid] = mids[0]
            for message in found:
                what = f"O pagamento.aprovado do {pid}"
                body = kit.expect_convention(message, what, "pagamento.aprovado")
                props = kit.message_props(message)
                expect(props.get("correlation_id") == pid,
                       f"{what} veio com correlation_id {props.get('correlation_id')!r}: copie o da reserva (o pedido_id).")
                expect(props.get("message_id") not in reservation_ids,
                       f"{what} reusa o message_id da reserva: cada mensagem nova leva um message_id novo.")
                expect(abs(float(body.get("valor", 0)) - VALUES_132[pid]) < 0.005,
                       f"{what} leva valor {body.get('valor')!r}, e o valor da reserva é {VALUES_132[pid]!r}: use "
                       f"catalogo.valor(itens) (de course_utils.loja).")

    def verify(self, ctx):
        q = kit.expect_durable_queue(ctx, self.queue, "o script do Pagamentos")
        del q
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"A fila '{self.queue}' ainda tem {ready} reserva(s).")
        self._published(ctx, kernel=False)


def _requeues(hooks) -> int:
    """How many nacks/rejects with requeue=True the FAULT_HOOK lines show."""
    return sum(1 for h in hooks if h[1] in ("nack", "reject") and h[3:4] == ["requeue=True"])


# --- 13.3 ----------------------------------------------------------------------------------------

TTL_133 = 1000
PLAN_133 = {"p-1": 0, "p-2": 1, "p-3": 2, "p-4": None, "p-5": 0}  # failures before success (None: always)
ATTEMPTS_133 = 3
DEAD_133 = "p-4"
SHIPPED_133 = [pid for pid, fails in PLAN_133.items() if fails is not None]


def _tracking_code(pedido_id: str) -> str:
    return f"BR{sorted(PLAN_133).index(pedido_id) + 1:04d}LJ"


class TransportadoraIndisponivel(ConnectionError):
    """What the check's carrier raises when it is down (a ConnectionError)."""


class _Transportadora:
    """The check's carrier: records every call (pedido_id, time.monotonic()), fails as PLAN_133 says,
    and stops a retry loop (a retry sooner than half the TTL, or a 4th attempt) with _TooMany."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, pedido_id, *args, **kwargs):
        now = time.monotonic()
        previous = [t for pid, t in self.calls if pid == pedido_id]
        self.calls.append((pedido_id, now))
        if previous and now - previous[-1] < 0.5:
            raise _TooMany("fast", pid=pedido_id)
        if len(previous) >= ATTEMPTS_133 or len(self.calls) > 30:
            raise _TooMany("many", pid=pedido_id)
        fails = PLAN_133.get(pedido_id, 0)
        if fails is None or len(previous) < fails:
            raise TransportadoraIndisponivel(f"transportadora fora do ar (pedido {pedido_id})")
        return _tracking_code(pedido_id)

    def attempts(self, pedido_id: str) -> list[float]:
        return [t for pid, t in self.calls if pid == pedido_id]


@contextlib.contextmanager
def _republished_x_death_ignored(before=None):
    """While the block runs, the x-death header is dropped from every message this process publishes:
    what RabbitMQ 4.0+ does with an x-death a client republishes, on any broker. `before(exchange,
    routing_key, body, properties)` sees each publish first (and may stop the learner's call)."""
    original = BlockingChannel.basic_publish

    @functools.wraps(original)
    def basic_publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        if before is not None:
            before(exchange, routing_key, body, properties)
        headers = getattr(properties, "headers", None)
        if isinstance(headers, dict) and "x-death" in headers:
            properties = pika.BasicProperties(**{**vars(properties),
                                                 "headers": {k: v for k, v in headers.items() if k != "x-death"}})
        return original(self, exchange, routing_key, body, properties, mandatory)

    BlockingChannel.basic_publish = basic_publish
    try:
        yield
    finally:
        BlockingChannel.basic_publish = original


def _pid_of(body) -> str | None:
    try:
        decoded = json.loads(body)
    except (TypeError, ValueError):
        return None
    return decoded.get("pedido_id") if isinstance(decoded, dict) else None


class NovaTentativa(Exercise):
    """Logística's retry with a delay: a failed attempt waits 1 s in a TTL queue that dead-letters back,
    counted in a header of the application's own; after 3 attempts, the DLQ."""

    id = "13.3"
    title = "Nova tentativa com espera, e a DLQ depois de 3."
    points = 3
    queue = "logistica.pagamentos"
    wait = "logistica.pagamentos.espera"
    dlq = "logistica.pagamentos.dlq"
    out = "ex133.saida"
    wait_arguments = {"x-message-ttl": TTL_133, "x-dead-letter-exchange": "",
                      "x-dead-letter-routing-key": "logistica.pagamentos"}

    def snapshot(self, ctx):
        kit.shop_bus(ctx, {self.queue: (["pagamento.aprovado"], kit.shop_dead_letter(self.queue)),
                           self.out: (["logistica.*"], None)})
        ctx.management.delete_queue(self.wait)

    def run(self, ctx):
        ids = {pid: f"a-{pid}" for pid in PLAN_133}  # deterministic: the grader's verify knows them too
        kit.publish_events(ctx, [("pagamento.aprovado", {"versao": 1, "pedido_id": pid, "valor": 50.0},
                                  kit.event_properties(pid, "pagamento.aprovado", ids[pid])) for pid in PLAN_133])
        carrier = _Transportadora()
        watch = PikaWatch()
        republished: dict[str, int] = {}

        # What a right answer never does stops the call at once, with its hint (no waiting for the retries).
        def before_publish(exchange, routing_key, body, properties):
            pid = _pid_of(body)
            if routing_key == self.wait:
                republished[pid] = republished.get(pid, 0) + 1
                if len(carrier.attempts(pid)) > ATTEMPTS_133 - 1:
                    raise _TooMany("many", pid=pid)
                hint = self._republish_hint(pid, republished[pid], exchange, properties, ids)
            elif routing_key in ("logistica.em_preparo", "logistica.enviado"):
                hint = self._event_hint(pid, routing_key, properties)
            else:
                hint = None
            if hint:
                raise _TooMany("hint", hint)

        def on_event(what, detail):
            if what == "consume" and detail[1]:
                raise _TooMany("hint", self.AUTO_ACK)
            if what == "settle" and detail.kind == "basic_ack":
                for body in detail.bodies:
                    hint = self._ack_hint(_pid_of(body), carrier, log)
                    if hint:
                        raise _TooMany("hint", hint)
            if what == "settle" and detail.kind != "basic_ack" and not detail.requeue:
                for body in detail.bodies:
                    pid = _pid_of(body)
                    tried = len(carrier.attempts(pid))
                    if tried < ATTEMPTS_133 and self._copy_in_wait(pid, tried, log):
                        raise _TooMany("hint", f"A sua função republicou o {pid} na fila de espera e depois rejeitou a "
                                               f"original (requeue=False): a rejeição manda a original para a DLQ, e o "
                                               f"pedido fica em dobro (uma cópia na espera, outra na DLQ). Depois de "
                                               f"republicar (com o confirm do broker), dê o ack da original.")
                    if tried < ATTEMPTS_133:
                        raise _TooMany("hint", f"A sua função rejeitou o {pid} para a DLQ depois de {tried} "
                                               f"tentativa(s): rejeite só quando a {ATTEMPTS_133}ª tentativa falhar "
                                               f"(x-tentativas da mensagem recebida + 1 == {ATTEMPTS_133}); antes "
                                               f"disso, republique na espera.")

        watch.on_event = on_event
        kit.release_left_open()
        stopped = None
        try:
            with kit.channel_calls() as log, _republished_x_death_ignored(before_publish), \
                    kit.watch_connections() as left:
                try:
                    call_watched(ctx, watch, "rodar_logistica", ctx.curso.url, carrier,
                                 on_timeout=lambda: self._hung(ctx, carrier))
                except _TooMany as exc:
                    stopped = exc
                    kit.close_all(left.created)
            if stopped is not None:
                raise AssertionError(stopped.hint or self._loop_hint(ctx, stopped, log))
            expect(not left, kit.left_open_hint("rodar_logistica", left))
        finally:
            kit.release_left_open()
        self._wait_queue(ctx)
        expect(not watch.auto_ack(), self.AUTO_ACK)
        expect(republished, f"A sua função não republicou nada na fila de espera '{self.wait}' (pela exchange padrão, "
                            f"routing_key='{self.wait}'): é lá que uma tentativa que falhou espera 1 s.")
        for pid in PLAN_133:
            times = carrier.attempts(pid)
            gaps = [b - a for a, b in zip(times, times[1:])]
            expect(all(g >= 0.9 for g in gaps),
                   f"As tentativas do {pid} vieram com {', '.join(f'{g:.2f}' for g in gaps)} s entre elas: cada nova "
                   f"tentativa espera o TTL da fila de espera (1 s) — republique na '{self.wait}', não na fila principal.")
        expected_calls = {pid: (ATTEMPTS_133 if fails is None else fails + 1) for pid, fails in PLAN_133.items()}
        got_calls = {pid: len(carrier.attempts(pid)) for pid in PLAN_133}
        expect(got_calls[DEAD_133] >= ATTEMPTS_133,
               f"O {DEAD_133} (a transportadora sempre falha para ele) foi tentado {got_calls[DEAD_133]} vez(es): "
               f"rejeite para a DLQ só depois da {ATTEMPTS_133}ª tentativa que falhou.")
        expect(got_calls == expected_calls,
               f"A transportadora foi chamada {got_calls} vez(es) por pedido, e o esperado é {expected_calls} (o p-2 "
               f"falha 1 vez, o p-3 2 vezes, o p-4 sempre): tente de novo até dar certo, no máximo {ATTEMPTS_133} "
               f"tentativas por pedido.")
        ready = kit.counts_of(ctx, self.queue)[0]
        waiting = (kit.exact_counts(ctx, self.wait) or (0, 0))[0]
        expect(ready == 0 and waiting == 0,
               f"Sobraram {ready} mensagem(ns) na '{self.queue}' e {waiting} na '{self.wait}' quando a sua função voltou: "
               f"dê o ack de cada mensagem tratada (também da original, depois de republicá-la na espera), e só saia "
               f"depois de a fila ficar mais tempo parada que o TTL (inactivity_timeout=2).")
        self._dead(ctx)
        self._shipped(ctx)

    def _copy_in_wait(self, pid, tried: int, log):
        """The logged (so, with confirms, confirmed) publish of `pid`'s copy into the wait queue after its
        `tried`-th attempt, or None."""
        return next((e for e in log if e[0] == "publish" and e[3] == self.wait and _pid_of(e[5]) == pid
                     and (getattr(e[4], "headers", None) or {}).get("x-tentativas") == tried), None)

    def _ack_hint(self, pid, carrier, log) -> str | None:
        """Why an ack of `pid`'s delivery, now, comes too early (None if it does not)."""
        tried = len(carrier.attempts(pid))
        fails = PLAN_133.get(pid)
        if not tried:
            return None
        if fails is not None and tried > fails:  # the carrier answered: both events first
            published = {e[3] for e in log if e[0] == "publish" and _pid_of(e[5]) == pid}
            missing = [k for k in ("logistica.em_preparo", "logistica.enviado") if k not in published]
            if missing:
                return (f"A sua função deu o ack do {pid} antes de publicar {' e '.join(missing)}: se ela cair entre o "
                        f"ack e o publish, o pedido pago nunca sai da Logística. Publique os dois eventos (num canal com "
                        f"confirms) e só então dê o ack.")
            return None
        copy = self._copy_in_wait(pid, tried, log)
        if copy is None and any(e[0] == "publish" and e[3] != self.wait and _pid_of(e[5]) == pid for e in log):
            return None  # republished elsewhere (the main queue?): the retry's own hints say where it went
        if copy is None:
            return (f"A sua função deu o ack do {pid} antes de republicá-lo na fila de espera '{self.wait}' (a "
                    f"{tried}ª tentativa falhou): se ela cair entre o ack e o publish, o pedido se perde. Republique "
                    f"primeiro, espere o confirm do broker, e só então dê o ack da original.")
        if not any(e[0] == "confirm" and e[1] is copy[1] for e in log[:log.index(copy)]):
            return (f"A sua função republicou o {pid} na fila de espera num canal sem publisher confirms e deu o ack "
                    f"da original: sem o confirm, nada garante que a cópia chegou ao broker antes de a original sair "
                    f"da fila. Chame channel.confirm_delivery() antes de consumir: com ele, o basic_publish só volta "
                    f"depois que o broker guardou a cópia, e o ack vem depois.")
        return None

    def _hung(self, ctx, carrier) -> str:
        return (f"`rodar_logistica` não voltou em {ctx.call_timeout:g} s (a transportadora foi chamada "
                f"{len(carrier.calls)} vez(es)). Consuma com channel.consume('{self.queue}', inactivity_timeout=2) e "
                f"saia do laço quando vier (None, None, None).")

    def _loop_hint(self, ctx, stopped: _TooMany, log) -> str:
        requeued = [e for e in log if e[0] in ("nack", "reject") and e[3]]
        if stopped.why == "fast" and requeued:
            return (f"A sua função devolveu o {stopped.pid} à fila com requeue=True (basic_{requeued[-1][0]}): ele volta "
                    f"na hora e o consumidor o pega de novo em milissegundos — um laço quente que martela a "
                    f"transportadora fora do ar. Na {ATTEMPTS_133}ª falha, rejeite com requeue=False (a mensagem vai "
                    f"para a DLQ); antes dela, republique na fila de espera '{self.wait}' e dê o ack da original.")
        if stopped.why == "fast":
            waited = [e for e in log if e[0] == "publish" and e[3] == self.wait]
            main = [e for e in log if e[0] == "publish" and e[3] == self.queue]
            if waited:
                q = ctx.queue(self.wait) or {}
                ttl = (q.get("arguments") or {}).get("x-message-ttl")
                return (f"A mensagem republicada na fila de espera '{self.wait}' voltou à transportadora em menos de "
                        f"meio segundo: a fila de espera tem x-message-ttl {ttl!r}, e o TTL é em milissegundos — "
                        f"declare-a com x-message-ttl {TTL_133} (1 s).")
            if main:
                return (f"A sua função republicou a mensagem que falhou direto na '{self.queue}': ela volta na hora e o "
                        f"consumidor a pega de novo em milissegundos — um laço quente que martela a transportadora fora "
                        f"do ar. Republique na fila de espera '{self.wait}' (routing_key='{self.wait}', TTL de 1 s, que a "
                        f"devolve à '{self.queue}') e dê o ack da original.")
            return ("A mesma mensagem voltou à transportadora logo depois de falhar, sem esperar: um "
                    "basic_nack(requeue=True) (ou republicar direto na fila principal) devolve a mensagem na hora, e "
                    "o consumidor a pega de novo em milissegundos — um laço quente que martela a transportadora fora "
                    f"do ar. Republique a mensagem na fila de espera '{self.wait}' (TTL de 1 s, que a devolve à "
                    f"'{self.queue}') e dê o ack da original.")
        return (f"O {stopped.pid} falhou {ATTEMPTS_133} vezes e a sua função ainda o mandou para outra tentativa: "
                f"ela não parou depois da {ATTEMPTS_133}ª falha. Conte as tentativas num cabeçalho seu, x-tentativas (0 quando não existe, +1 a "
                f"cada falha, gravado na mensagem republicada), e rejeite com requeue=False quando chegar a "
                f"{ATTEMPTS_133}. Não conte pelo x-death: a partir do RabbitMQ 4.0 o broker ignora o x-death de uma "
                f"mensagem que um cliente republica, e o count fica sempre em 1 (a verificação faz o mesmo no 3.10).")

    def _wait_queue(self, ctx) -> None:
        q = ctx.queue(self.wait)
        expect(q is not None, f"A fila de espera '{self.wait}' não existe: declare-a na sua função (durável, com "
                              f"{self.wait_arguments}).")
        expect(q.get("durable") and not q.get("exclusive") and not q.get("auto_delete"),
               f"A fila de espera '{self.wait}' deve ser durável (durable=True), nem exclusiva nem auto_delete.")
        expect(_declared(q) == self.wait_arguments,
               f"A fila de espera '{self.wait}' foi declarada com os argumentos {q.get('arguments')}, e devem ser "
               f"exatamente {self.wait_arguments}: o TTL de 1000 ms (um número, não um texto) e a dead-letter pela "
               f"exchange padrão (\"\") de volta para a '{self.queue}'.")

    AUTO_ACK = ("A sua função consumiu com auto_ack=True: sem ack manual não há como rejeitar a mensagem para a DLQ "
                "nem garantir que ela só sai da fila depois de republicada na espera. Consuma com auto_ack=False.")

    def _republish_hint(self, pid, n: int, exchange, properties, ids: dict[str, str]) -> str | None:
        """What is wrong with the n-th republish of order `pid` into the wait queue, or None."""
        headers = getattr(properties, "headers", None) or {}
        if exchange != "":
            return (f"A sua função republicou o {pid} na exchange {exchange!r}: publique na exchange padrão (\"\") "
                    f"com routing_key='{self.wait}'.")
        if "x-tentativas" not in headers:
            return (f"A mensagem do {pid} foi republicada na espera sem o cabeçalho x-tentativas: grave nele as "
                    f"tentativas feitas até agora (headers={{**(properties.headers or {{}}), 'x-tentativas': n}}). Não "
                    f"conte pelo x-death: a partir do RabbitMQ 4.0 o broker ignora o x-death de uma mensagem "
                    f"republicada por um cliente, e o count fica sempre em 1.")
        if headers.get("x-tentativas") != n:
            return (f"A {n}ª republicação do {pid} levou x-tentativas = {headers.get('x-tentativas')!r}, e devia "
                    f"levar {n} (as tentativas feitas até agora: leia o cabeçalho da mensagem recebida, 0 se não "
                    f"existir, e some 1).")
        same = {"message_id": ids.get(pid), "correlation_id": pid, "type": "PagamentoAprovado",
                "content_type": "application/json", "delivery_mode": 2}
        changed = [k for k, v in same.items() if getattr(properties, k, None) != v]
        if changed:
            return (f"A mensagem do {pid} foi republicada sem as mesmas propriedades da original ({', '.join(changed)} "
                    f"mudou ou faltou): republique com as propriedades recebidas (delivery_mode, content_type, type, "
                    f"message_id, correlation_id), mudando só o cabeçalho x-tentativas.")
        return None

    @staticmethod
    def _event_hint(pid, key: str, properties) -> str | None:
        """What a logistics event's properties lack of the convention, or None (the bodies are read later)."""
        what = f"O {key} do {pid}"
        if not kit.persistent_properties(properties):
            return f"{what} não é persistente: publique com delivery_mode=pika.DeliveryMode.Persistent."
        if getattr(properties, "content_type", None) != "application/json":
            return f"{what} veio sem content_type=\"application/json\" (a convenção das propriedades)."
        if getattr(properties, "type", None) != contratos.CHAVES[key]:
            return (f"{what} veio com type {getattr(properties, 'type', None)!r}: o type é o nome do evento, "
                    f"{contratos.CHAVES[key]!r} (CHAVES[{key!r}]).")
        if not getattr(properties, "message_id", None):
            return f"{what} veio sem message_id: cada mensagem leva um id novo (str(uuid.uuid4()))."
        if getattr(properties, "correlation_id", None) != pid:
            return (f"{what} veio com correlation_id {getattr(properties, 'correlation_id', None)!r}: copie o "
                    f"correlation_id do pagamento (o pedido_id).")
        return None

    def _dead(self, ctx) -> None:
        messages = _peek(ctx, self.dlq)
        dead = [_corr(m) for m in messages]
        expect(dead == [DEAD_133],
               f"A DLQ '{self.dlq}' {_holds(dead)}, e devia ter só o {DEAD_133} (a transportadora sempre falha "
               f"para ele): depois da {ATTEMPTS_133}ª tentativa que falhou, rejeite com "
               f"ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False) — a fila tem a dead-letter da loja.")
        props = kit.message_props(messages[0])
        headers = props.get("headers") or {}
        kept = {"message_id": f"a-{DEAD_133}", "correlation_id": DEAD_133, "type": "PagamentoAprovado",
                "content_type": "application/json", "delivery_mode": 2}
        changed = [k for k, v in kept.items() if props.get(k) != v]
        expect(not changed,
               f"O {DEAD_133} chegou à DLQ sem as propriedades da mensagem original ({', '.join(changed)} mudou ou "
               f"faltou): ao republicar na espera, copie as propriedades recebidas, mudando só o cabeçalho x-tentativas.")
        deaths = headers.get("x-death") or []
        expect(any(d.get("reason") == "rejected" and d.get("queue") == self.queue for d in deaths),
               f"O {DEAD_133} está na DLQ sem o x-death de uma rejeição na '{self.queue}': não o publique você mesmo "
               f"na DLQ — rejeite com requeue=False, e o RabbitMQ o leva para lá.")
        expect(headers.get("x-tentativas") == ATTEMPTS_133 - 1,
               f"O {DEAD_133} chegou à DLQ com x-tentativas = {headers.get('x-tentativas')!r}, e devia chegar com "
               f"{ATTEMPTS_133 - 1} (a mensagem rejeitada é a da {ATTEMPTS_133}ª tentativa, republicada depois da "
               f"{ATTEMPTS_133 - 1}ª falha).")

    def _shipped(self, ctx) -> None:
        messages = ctx.management.peek(self.out, 30)
        events: dict[str, list[str]] = {}
        for message in messages:
            events.setdefault(_corr(message), []).append(message.get("routing_key"))
        expect(DEAD_133 not in events,
               f"Saíram eventos de logística do {DEAD_133}, que nunca foi enviado: publique só depois que a "
               f"transportadora respondeu.")
        expected = ["logistica.em_preparo", "logistica.enviado"]
        wrong = {pid: events.get(pid) for pid in SHIPPED_133 if events.get(pid) != expected}
        expect(not wrong,
               f"Os eventos de logística por pedido são {wrong}, e cada pedido enviado devia ter, uma vez e nesta "
               f"ordem, {expected} (publique os dois em '{EXCHANGE}' quando a transportadora responder).")
        for message in messages:
            pid, key = _corr(message), message.get("routing_key")
            what = f"O {key} do {pid}"
            body = kit.expect_convention(message, what, key)
            expect(kit.message_props(message).get("correlation_id") == pid,
                   f"{what} veio com correlation_id {kit.message_props(message).get('correlation_id')!r}: copie o "
                   f"correlation_id do pagamento (o pedido_id).")
            if key == "logistica.enviado":
                expect(body.get("codigo_rastreio") == _tracking_code(pid),
                       f"{what} leva codigo_rastreio {body.get('codigo_rastreio')!r}, e a transportadora devolveu "
                       f"{_tracking_code(pid)!r}: publique o que transportadora(pedido_id) devolveu.")

    def verify(self, ctx):
        self._wait_queue(ctx)
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"A fila '{self.queue}' ainda tem {ready} mensagem(ns).")
        self._dead(ctx)
        self._shipped(ctx)


def _peek(ctx, queue: str, count: int = 20) -> list[dict]:
    """The messages of `queue` as the management API shows them (put back); [] if it does not exist."""
    from ...management import ManagementError

    try:
        return ctx.management.peek(queue, count)
    except ManagementError as exc:
        if exc.status == 404:
            return []
        raise


# --- 13.4 ----------------------------------------------------------------------------------------

LIMIT_134 = 3
DELIVERIES_134 = LIMIT_134 + 1  # measured on 3.10.8 and 4.0.5: the first delivery and 3 redeliveries
KEYS_134 = ["pagamento.*", "logistica.enviado"]
EVENTS_134 = [  # (routing key, pedido_id): p-3's notice fails once, p-9's always
    ("pagamento.aprovado", "p-1"),
    ("pagamento.rejeitado", "p-2"),
    ("pagamento.aprovado", "p-3"),
    ("pagamento.aprovado", "p-9"),
    ("logistica.enviado", "p-4"),
]
TRANSIENT_134, POISON_134 = "p-3", "p-9"


def _event_134(key: str, pid: str) -> dict:
    extra = {"pagamento.aprovado": {"valor": 50.0}, "pagamento.rejeitado": {"motivo": "cartão recusado"},
             "logistica.enviado": {"codigo_rastreio": f"BR{pid}"}}[key]
    return {"versao": 1, "pedido_id": pid, **extra}


class _Avisos:
    """The check's `avisar`: records each call's pedido_id; p-3 fails its first call, p-9 every call;
    a 5th delivery of p-9 (or 40 calls) is a loop, stopped with _TooMany."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failed: list[str] = []

    def __call__(self, evento, *args, **kwargs):
        if not isinstance(evento, dict):
            raise _TooMany("hint", f"A sua função chamou avisar com {type(evento).__name__} "
                                   f"({kit.shown([evento]) if isinstance(evento, (bytes, str)) else repr(evento)[:60]}), e "
                                   f"avisar espera o evento decodificado, um dict: chame avisar(json.loads(body)).")
        pid = evento.get("pedido_id")
        self.calls.append(pid)
        if self.calls.count(POISON_134) > DELIVERIES_134 or len(self.calls) > 40:
            raise _TooMany("many")
        if pid == POISON_134 or (pid == TRANSIENT_134 and self.calls.count(pid) == 1):
            self.failed.append(pid)
            if pid == POISON_134:
                raise ValueError(f"endereço de e-mail inválido no pedido {pid}")
            raise AvisoFalhou("servidor de e-mail fora do ar")
        return True


class AvisoFalhou(Exception):
    """What the check's `avisar` raises for a passing failure: neither a ValueError nor a ConnectionError,
    since the statement asks to requeue on any exception."""


def _advice_134(exc: BaseException) -> str | None:
    if isinstance(exc, AvisoFalhou):
        return ("A exceção que avisar levantou escapou da sua função: avisar pode falhar com qualquer exceção — "
                "capture todas (except Exception) e devolva a mensagem com "
                "ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True).")
    return kit.advice_in(_ADVICE_134, exc)


_ADVICE_134 = {
    "invalid arg 'x-delivery-limit'": "O x-delivery-limit só existe em filas quorum (uma fila clássica o recusa): "
                                      "declare a fila com arguments={'x-queue-type': 'quorum', 'x-delivery-limit': 3, ...}.",
    "unknown delivery tag": "A mesma entrega foi confirmada duas vezes (um ack e depois um nack, ou dois acks), e o "
                            "broker fechou o canal (unknown delivery tag): cada entrega leva um só ack ou nack. Chame "
                            "avisar primeiro e só então dê o ack (se deu certo) ou o nack com requeue=True (se falhou).",
    "inequivalent arg": "A fila já existe com outros argumentos (de uma tentativa anterior?): rode a célula de "
                        "verificação de novo (ela apaga a fila antes), e declare-a sempre com os mesmos argumentos.",
}


class PedidoVenenoso(Exercise):
    """A quorum queue whose delivery limit lets the broker stop a poison message, while a passing failure
    is requeued and succeeds."""

    id = "13.4"
    title = "O broker para o pedido venenoso."
    points = 3
    queue = "notificacoes.pedidos"
    dlq = "notificacoes.pedidos.dlq"
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": LIMIT_134, **kit.shop_dead_letter("notificacoes.pedidos")}

    def snapshot(self, ctx):
        kit.shop_bus(ctx, {})  # the exchanges
        kit.reset_topology(ctx, queues=[self.queue, self.dlq])

    def run(self, ctx):
        avisar = _Avisos()
        watch = PikaWatch()
        unroutable: list[str] = []
        published = []
        sender = ctx.curso.connect()
        channel = sender.channel()
        channel.confirm_delivery()

        def on_event(what, detail):  # the events arrive once the learner's consumer is registered
            if what != "consume" or published:
                return
            published.append(True)
            for key, pid in EVENTS_134:
                try:
                    channel.basic_publish(exchange=EXCHANGE, routing_key=key, body=json.dumps(_event_134(key, pid)),
                                          properties=kit.event_properties(pid, key), mandatory=True)
                except pika.exceptions.UnroutableError:
                    unroutable.append(key)

        watch.on_event = on_event
        kit.release_left_open()
        looped = None
        try:
            with kit.watch_connections() as left:
                try:
                    call_watched(ctx, watch, "rodar_notificacoes", ctx.curso.url, avisar,
                                 advice=_advice_134,
                                 on_timeout=lambda: self._hung(ctx, avisar))
                except _TooMany as exc:
                    looped = exc
                    kit.close_all(left.created)
            if looped is not None:
                raise AssertionError(looped.hint or self._loop_hint(ctx, avisar))
            expect(not left, kit.left_open_hint("rodar_notificacoes", left))
        finally:
            kit.release_left_open()
            kit.close_quietly(sender)
        self._definitions(ctx)
        expect(published, "A sua função não consumiu da fila (channel.consume ou basic_consume): a verificação publica "
                          "os eventos quando o consumidor se registra.")
        expect(not unroutable,
               f"Quando o seu consumidor se registrou, os eventos {sorted(set(unroutable))} não tinham para onde ir: "
               f"declare a fila e ligue-a à exchange '{EXCHANGE}' antes de consumir.")
        expect(not watch.auto_ack(),
               "A sua função consumiu com auto_ack=True: a mensagem sai da fila na entrega, e não há como devolvê-la "
               "(nack) quando o aviso falha. Consuma com auto_ack=False.")
        transient = avisar.calls.count(TRANSIENT_134)
        expect(transient >= 2,
               f"O aviso do {TRANSIENT_134} falhou uma vez (o servidor de e-mail estava fora do ar) e nunca foi tentado "
               f"de novo: uma falha passageira pode dar certo na próxima entrega — devolva a mensagem com "
               f"ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True). Um ack tira a mensagem da fila de vez, "
               f"e um nack com requeue=False a manda para a DLQ, já na primeira falha.")
        poison = avisar.calls.count(POISON_134)
        expect(poison == DELIVERIES_134,
               f"O aviso do {POISON_134} (que sempre falha) foi tentado {poison} vez(es), e com x-delivery-limit "
               f"{LIMIT_134} o broker o entrega {DELIVERIES_134} vezes (a primeira e {LIMIT_134} reentregas) antes de "
               f"mandá-lo para a dead-letter: devolva com requeue=True a cada falha e deixe o limite agir.")
        counts = {pid: avisar.calls.count(pid) - avisar.failed.count(pid) for _key, pid in EVENTS_134}
        expected = {pid: (0 if pid == POISON_134 else 1) for _key, pid in EVENTS_134}
        expect(counts == expected,
               f"Avisos que deram certo, por pedido: {counts}; o esperado é {expected} (cada evento avisado uma vez). "
               f"Dê o ack de cada evento avisado com sucesso.")
        self._left(ctx)

    def _hung(self, ctx, avisar) -> str:
        return (f"`rodar_notificacoes` não voltou em {ctx.call_timeout:g} s (avisar foi chamada {len(avisar.calls)} "
                f"vez(es)). Consuma com channel.consume('{self.queue}', inactivity_timeout=1.5) e saia do laço quando "
                f"vier (None, None, None).")

    def _loop_hint(self, ctx, avisar) -> str:
        q = ctx.queue(self.queue) or {}
        arguments = q.get("arguments") or {}
        poison = avisar.calls.count(POISON_134)
        if q.get("type") != "quorum":
            why = (f"a fila '{self.queue}' é {q.get('type') or 'de outro tipo'}, não quorum: só uma fila quorum conta "
                   f"as entregas e para a mensagem no limite (x-queue-type: quorum, x-delivery-limit: {LIMIT_134}).")
        elif arguments.get("x-delivery-limit") is None:
            why = (f"a fila quorum não tem x-delivery-limit: no RabbitMQ 3.10 não há limite nenhum, e no 4.x o padrão "
                   f"é 20 entregas. Declare-a com x-delivery-limit {LIMIT_134}.")
        else:
            why = (f"a fila tem x-delivery-limit {arguments.get('x-delivery-limit')!r}, e devia ter {LIMIT_134}.")
        return (f"O evento venenoso {POISON_134} (o aviso dele sempre falha) foi entregue {poison} vezes, mais que as "
                f"{DELIVERIES_134} de um limite de {LIMIT_134} reentregas (a verificação parou a sua função ali): {why}")

    def _definitions(self, ctx) -> None:
        q = ctx.queue(self.queue)
        expect(q is not None, f"A fila '{self.queue}' não existe: declare-a na sua função.")
        expect(q.get("type") == "quorum" and q.get("durable"),
               f"A fila '{self.queue}' é do tipo {q.get('type')!r}: declare-a quorum (durable=True, "
               f"arguments={{'x-queue-type': 'quorum', ...}}) — só uma fila quorum conta as entregas de cada mensagem.")
        arguments = q.get("arguments") or {}
        expect(arguments.get("x-delivery-limit") == LIMIT_134,
               f"A fila '{self.queue}' tem x-delivery-limit {arguments.get('x-delivery-limit')!r}, e devia ter "
               f"{LIMIT_134}.")
        dead = {k: arguments.get(k) for k in ("x-dead-letter-exchange", "x-dead-letter-routing-key")}
        expect(dead == kit.shop_dead_letter(self.queue),
               f"A fila '{self.queue}' tem {dead} como dead-letter, e a convenção da loja é "
               f"{kit.shop_dead_letter(self.queue)}: sem ela, a mensagem que passa do limite é descartada.")
        d = ctx.queue(self.dlq)
        expect(d is not None and d.get("durable"),
               f"A fila '{self.dlq}' não existe (ou não é durável): declare-a (durable=True) e ligue-a à exchange "
               f"'{DLX}' pela chave '{self.queue}'.")
        bindings = kit.bindings_from(ctx, DLX)
        expect(any(b["destination"] == self.dlq and b["routing_key"] == self.queue for b in bindings),
               f"A fila '{self.dlq}' não está ligada à exchange '{DLX}' pela chave '{self.queue}': sem o binding, a "
               f"mensagem que passa do limite não chega a lugar nenhum.")
        keys = sorted(b["routing_key"] for b in kit.bindings_from(ctx, EXCHANGE) if b["destination"] == self.queue)
        expect(keys == sorted(KEYS_134),
               f"A fila '{self.queue}' está ligada a '{EXCHANGE}' pelas chaves {keys}, e devem ser {sorted(KEYS_134)}.")

    def _left(self, ctx) -> None:
        ready = kit.counts_of(ctx, self.queue)[0]
        expect(ready == 0, f"Sobraram {ready} evento(s) na fila '{self.queue}': dê o ack de cada aviso que deu certo.")
        dead = _peek(ctx, self.dlq)
        pids = [_corr(m) for m in dead]
        expect(pids == [POISON_134],
               f"A dead-letter '{self.dlq}' {_holds(pids)}, e devia ter só o {POISON_134}: o evento que falha "
               f"sempre vai para lá pelo limite de entregas; o que falha uma vez só volta (requeue=True) e dá certo.")
        deaths = (kit.message_props(dead[0]).get("headers") or {}).get("x-death") or []
        expect(any(d.get("reason") == "delivery_limit" for d in deaths),
               f"O {POISON_134} está na dead-letter sem o x-death de reason 'delivery_limit': não o rejeite você "
               f"mesmo (requeue=False) — devolva com requeue=True e deixe o broker pará-lo no limite.")

    def verify(self, ctx):
        self._definitions(ctx)
        self._left(ctx)
