"""Checks for chapter 8 (Escalabilidade e alta disponibilidade). Statements:
solutions/08_escalabilidade_e_alta_disponibilidade.ipynb.

Every check runs on the chapter's local 3-node cluster (`ctx.curso.cluster()`, vhost "/"), all of it in
`run` (the kernel side): when grading, the grader's own process holds no cluster, and `verify` would
start one there. So `snapshot` and `verify` stay empty here, and the fixtures are not broker-visible.

A check may find the cluster as a previous check (or a previous wrong answer) left it: it starts with
`cluster.restore()` (every node back), deletes and re-declares its own queues, and ends with the cluster
whole again (`restore()` in a `finally`), so that the next exercise starts on three nodes.

8.1 and 8.2 hand the learner a channel on node 1 and read the definitions back from the management API
of a node (current at once); 8.2 proves the reply queue's owner with passive declares (the owner's
connection may, any other gets 405 RESOURCE_LOCKED), then that it is gone once that connection closes.

8.3 and 8.4 kill node 1 (SIGKILL, `cluster.kill_node(1)`, which returns once the others noticed) at a
deterministic point of the learner's call: 8.3 right after the 20th publish the broker confirmed (so the
21st publish meets a dead connection), 8.4 inside the check's `processar` at its 8th call, before it
returns (so that message's ack is lost and the broker redelivers it). `_Client` records, for the
duration of the call, every connection attempt (its parameters, when, whether it failed), every publish
(properties, whether confirms were on) and the prefetch/consume calls of each channel; 8.3 also refuses
the first connection attempt after the kill (the cluster "not answering yet"), so that the pause between
two attempts can be measured. What reached the queue is read from node 2 afterwards, exactly (passive
declare, then every message consumed and acked).
"""
from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import Counter
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from .. import kit, phrases
from ..checks import CheckContext, Exercise, close_quietly, expect
from ..pikawatch import PikaWatch

QUORUM = {"x-queue-type": "quorum"}
KINDS = {"classic": "clássica", "quorum": "quorum", "stream": "stream"}

AMQP_ADVICE = {
    "exclusive-owner": ("Uma fila quorum (ou stream) não pode ser exclusiva: ela é replicada em vários nós e "
                        "existe independentemente de qualquer conexão. Declare-a só com durable=True e "
                        "arguments={'x-queue-type': ...}."),
    "unsupported queue type": ("O valor de 'x-queue-type' não é um tipo que o RabbitMQ conheça: os tipos são "
                               "'classic', 'quorum' e 'stream', em minúsculas."),
    "invalid arg 'x-delivery-limit'": ("O broker recusou x-delivery-limit numa fila clássica: o limite de entregas "
                                       "só existe em filas quorum — a fila não saiu do tipo quorum. Confira a "
                                       "chave 'x-queue-type' (um argumento com o nome errado é ignorado, e a fila "
                                       "vira clássica)."),
    "rabbit_classic_queue": ("O broker recusou um argumento de fila quorum numa fila clássica: a declaração não "
                             "pediu o tipo quorum. Ponha arguments={'x-queue-type': 'quorum', ...} (a chave escrita "
                             "assim, em minúsculas; um argumento de nome errado é ignorado e a fila vira clássica)."),
    "inequivalent arg": ("O broker recusou declarar de novo uma fila que já existe com outros argumentos (406 "
                         "PRECONDITION_FAILED): declare cada fila uma vez, sempre com os mesmos argumentos."),
    "RESOURCE_LOCKED": ("Uma fila exclusiva só pode ser usada pela conexão que a criou (405 RESOURCE_LOCKED)."),
}


class _Stop(BaseException):
    """Raised from inside the learner's call (by the check's `processar`, or after a publish) to end it
    once the verdict is known and cannot change: a publisher without confirms, a consumer with auto_ack
    or without a prefetch. It saves the node kill and the wait for messages such an answer lost. A
    BaseException, so that a learner's `except Exception:` cannot swallow it."""


def _advice(exc: BaseException) -> str | None:
    return kit.advice_in(AMQP_ADVICE, exc)


# --- the cluster ----------------------------------------------------------------------------------

def _cluster(ctx: CheckContext):
    """The chapter's cluster, whole (every node back); a cluster that cannot run here is a hint.
    Connections an earlier check kept open for its verdict are closed first."""
    from ...errors import CourseError
    kit.release_left_open()
    try:
        cluster = ctx.curso.cluster()
        cluster.restore()
    except CourseError as exc:
        raise AssertionError(f"A verificação precisa do cluster de 3 nós do capítulo, e ele não subiu: {exc}") from None
    return cluster


def _short(name: str | None) -> str:
    """'ex08-no2-1234@localhost' -> 'nó 2' (how the lesson names the nodes)."""
    if not name:
        return "nenhum nó"
    head = name.split("@", 1)[0]
    number = head.rsplit("-no", 1)[-1].split("-", 1)[0]
    return f"nó {number}" if number.isdigit() else name


def _nodes(names) -> str:
    return ", ".join(_short(n) for n in sorted(names)) or "nenhum"


def _record(cluster, queue: str, via: int = 1) -> dict | None:
    """The queue's management record as node `via` sees it (definitions: current at once), or None."""
    return cluster.management(via).queue_or_none(queue, "/")


def _delete(cluster, *queues: str, via: int = 1) -> None:
    mgmt = cluster.management(via)
    for queue in queues:
        mgmt.delete_queue(queue, "/")


def _quorum_led_by(cluster, queue: str, leader: int, arguments: dict | None = None) -> None:
    """Delete `queue` and declare it again, quorum on the three nodes, led by node `leader`
    (declared from a connection to that node with x-queue-leader-locator=client-local)."""
    _delete(cluster, queue, via=leader)
    with pika.BlockingConnection(cluster.params(leader)) as connection:
        connection.channel().queue_declare(queue=queue, durable=True, arguments={
            **QUORUM, "x-quorum-initial-group-size": 3, "x-queue-leader-locator": "client-local", **(arguments or {})})
    led = cluster.quorum_leader(queue, via=leader)
    if led != cluster.names[leader - 1]:
        raise AssertionError(f"A verificação declarou '{queue}' com o líder no nó {leader}, e o cluster diz que o "
                             f"líder é {_short(led)}. Rode a célula de verificação de novo.")


class _Handed:
    """A connection of the check's own on one node of the cluster, to hand a channel of it to the learner."""

    def __init__(self, cluster, node: int = 1):
        self.connection = pika.BlockingConnection(cluster.params(node))

    def close(self) -> None:
        close_quietly(self.connection)


def _ready_count(cluster, queue: str, via: int) -> int | None:
    with pika.BlockingConnection(cluster.params(via)) as connection:
        try:
            return connection.channel().queue_declare(queue=queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return None


def _left_open_hint(name: str, left: list) -> str | None:
    if not left:
        return None
    return (f"`{name}` voltou e deixou {len(left)} conexão(ões) aberta(s) com o cluster. Feche a conexão antes "
            f"de sair da função (connection.close()), também a que abriu depois de reconectar.")


# --- recording a learner's client during a call ---------------------------------------------------------

class _Client:
    """For the duration of a learner's call (a `with` block), on pika's BlockingConnection and
    BlockingChannel classes: every connection attempt (parameters, when it started and ended, whether it
    failed), every basic_publish (routing key, properties, whether confirms were on on that channel, when
    it returned and whether it raised), and the basic_qos / consume / basic_consume calls of each channel.

    `after_publish(record)` runs after each publish that returned; `refuse_next` makes the next
    connection attempt fail with AMQPConnectionError before it reaches the network (a node that does not
    answer yet), once."""

    def __init__(self) -> None:
        self.attempts: list[dict] = []
        self.publishes: list[dict] = []
        self.confirming: set[int] = set()
        self.qos: dict[int, list[int]] = {}
        self.consumes: list[dict] = []
        self.after_publish = None
        self.refuse_next = False
        self.refused: list[dict] = []
        self._saved: dict[tuple[type, str], Any] = {}

    def __enter__(self) -> "_Client":
        log = self
        for cls, name in ((BlockingConnection, "__init__"), (BlockingChannel, "basic_publish"),
                          (BlockingChannel, "confirm_delivery"), (BlockingChannel, "basic_qos"),
                          (BlockingChannel, "consume"), (BlockingChannel, "basic_consume")):
            self._saved[(cls, name)] = cls.__dict__[name]
        init = self._saved[(BlockingConnection, "__init__")]
        publish = self._saved[(BlockingChannel, "basic_publish")]
        confirm = self._saved[(BlockingChannel, "confirm_delivery")]
        qos = self._saved[(BlockingChannel, "basic_qos")]
        consume = self._saved[(BlockingChannel, "consume")]
        basic_consume = self._saved[(BlockingChannel, "basic_consume")]

        @functools.wraps(init)
        def connect(connection, parameters=None, *args, **kwargs):
            record = {"parameters": parameters, "at": time.monotonic(), "failed": None}
            log.attempts.append(record)
            try:
                if log.refuse_next:
                    log.refuse_next = False
                    log.refused.append(record)
                    raise pika.exceptions.AMQPConnectionError(
                        "a verificação recusou esta tentativa de conexão de propósito (como um cluster que ainda "
                        "não responde)")
                init(connection, parameters, *args, **kwargs)
            except BaseException as exc:
                record["failed"] = exc
                raise
            finally:
                record["ended"] = time.monotonic()

        @functools.wraps(publish)
        def basic_publish(channel, exchange, routing_key, body, properties=None, mandatory=False):
            record = {"routing_key": routing_key, "body": body, "properties": properties,
                      "confirming": id(channel) in log.confirming, "failed": None}
            try:
                result = publish(channel, exchange, routing_key, body, properties, mandatory)
            except BaseException as exc:
                record["failed"] = exc
                raise
            finally:
                record["at"] = time.monotonic()
                log.publishes.append(record)
            if log.after_publish is not None:
                log.after_publish(record)
            return result

        @functools.wraps(confirm)
        def confirm_delivery(channel, *args, **kwargs):
            result = confirm(channel, *args, **kwargs)
            log.confirming.add(id(channel))
            return result

        @functools.wraps(qos)
        def basic_qos(channel, prefetch_size=0, prefetch_count=0, global_qos=False):
            result = qos(channel, prefetch_size, prefetch_count, global_qos)
            log.qos.setdefault(id(channel), []).append(prefetch_count)
            return result

        consume_signature = inspect.signature(consume)

        @functools.wraps(consume)
        def consume_recorded(channel, *args, **kwargs):
            try:
                bound = consume_signature.bind(channel, *args, **kwargs)
            except TypeError:  # a wrong call: pika itself will say so
                return consume(channel, *args, **kwargs)
            bound.apply_defaults()
            log.consumes.append({"channel": id(channel), "how": "consume", "queue": bound.arguments["queue"],
                                 "inactivity_timeout": bound.arguments["inactivity_timeout"],
                                 "prefetch": list(log.qos.get(id(channel), []))})
            return consume(channel, *args, **kwargs)

        @functools.wraps(basic_consume)
        def basic_consume_recorded(channel, *args, **kwargs):
            queue = kwargs.get("queue", args[0] if args else None)
            log.consumes.append({"channel": id(channel), "how": "basic_consume", "queue": queue,
                                 "inactivity_timeout": None, "prefetch": list(log.qos.get(id(channel), []))})
            return basic_consume(channel, *args, **kwargs)

        BlockingConnection.__init__ = connect
        BlockingChannel.basic_publish = basic_publish
        BlockingChannel.confirm_delivery = confirm_delivery
        BlockingChannel.basic_qos = basic_qos
        BlockingChannel.consume = consume_recorded
        BlockingChannel.basic_consume = basic_consume_recorded
        return self

    def __exit__(self, *exc) -> None:
        for (cls, name), original in self._saved.items():
            setattr(cls, name, original)


def _single_node(parameters) -> bool:
    """Connection parameters naming one node (not a list of them)."""
    return parameters is not None and not isinstance(parameters, (list, tuple))


# --- 8.1 ------------------------------------------------------------------------------------------

class FilaQuorum(Exercise):
    id = "8.1"
    title = "A fila quorum 'pedidos' tem réplicas nos três nós."
    points = 2
    queue = "pedidos"
    group = 3
    limit = 5

    def run(self, ctx: CheckContext) -> None:
        cluster = _cluster(ctx)
        _delete(cluster, self.queue)
        handed = _Handed(cluster, 1)
        try:
            kit.release_left_open()
            with kit.watch_connections() as left:
                ctx.call("declarar_pedidos", handed.connection.channel(), advice=_advice)
            opened = len(left.created)
        finally:
            handed.close()
        expect(not left, f"`declarar_pedidos` abriu {opened} conexão(ões) e deixou {len(left)} aberta(s): use o "
                         f"`channel` que recebeu, sem abrir outras conexões.")
        expect(not opened, f"`declarar_pedidos` abriu {opened} conexão(ões) próprias: declare a fila pelo `channel` "
                           f"que recebeu.")
        q = _record(cluster, self.queue)
        declare = (f"channel.queue_declare(queue='{self.queue}', durable=True, arguments={{'x-queue-type': 'quorum', "
                   f"'x-quorum-initial-group-size': {self.group}, 'x-delivery-limit': {self.limit}}})")
        expect(q is not None, f"A fila '{self.queue}' não existe no cluster depois de `declarar_pedidos(channel)`. "
                              f"Declare-a com {declare}.")
        arguments = q.get("arguments") or {}
        if q.get("type") != "quorum":
            odd = sorted(k for k in arguments if k != "x-queue-type" and "queue-type" in k.replace("_", "-").lower()
                         or k.lower().startswith("x-queue-ty") and k != "x-queue-type")
            typo = (f" Os argumentos dela têm {odd}: um argumento com o nome errado é ignorado pelo broker, e a fila "
                    f"vira clássica — a chave certa é 'x-queue-type'." if odd else "")
            expect(False, f"A fila '{self.queue}' é do tipo {q.get('type')!r}, e uma fila clássica vive num nó só: se ele "
                          f"cair, a fila fica indisponível (e, sem disco, perdida).{typo} Declare-a com "
                          f"arguments={{'x-queue-type': 'quorum', ...}}.")
        expect(q.get("durable"), f"A fila '{self.queue}' não é durável: declare-a com durable=True.")
        group = arguments.get("x-quorum-initial-group-size")
        expect(group is not None,
               f"A fila '{self.queue}' não tem 'x-quorum-initial-group-size': sem ele, o número de réplicas segue o "
               f"padrão do broker. Escreva o que você quer: 'x-quorum-initial-group-size': {self.group}.")
        expect(group == self.group, f"A fila '{self.queue}' tem 'x-quorum-initial-group-size': {group!r}; o "
                                    f"enunciado pede {self.group} (uma réplica em cada nó).")
        limit = arguments.get("x-delivery-limit")
        expect(limit is not None, f"A fila '{self.queue}' não tem 'x-delivery-limit': o padrão muda com a versão "
                                  f"(nenhum limite no 3.10, 20 a partir do 4.0). Declare 'x-delivery-limit': "
                                  f"{self.limit}.")
        expect(limit == self.limit, f"A fila '{self.queue}' tem 'x-delivery-limit': {limit!r}; o enunciado pede "
                                    f"{self.limit} (um número inteiro).")
        members = cluster.quorum_members(self.queue)
        expect(sorted(members["membros"]) == sorted(cluster.names),
               f"A fila '{self.queue}' tem réplicas em {_nodes(members['membros'])}; esperava os três nós.")
        expect(sorted(members["online"]) == sorted(cluster.names),
               f"Só {_nodes(members['online'])} das réplicas de '{self.queue}' estão online.")


# --- 8.2 ------------------------------------------------------------------------------------------

class TipoCerto(Exercise):
    id = "8.2"
    title = "Quorum para os pagamentos, stream para a auditoria, exclusiva para as respostas."
    points = 2
    payments = "pagamentos"
    audit = "auditoria"

    def run(self, ctx: CheckContext) -> None:
        cluster = _cluster(ctx)
        _delete(cluster, self.payments, self.audit)
        handed = _Handed(cluster, 1)
        try:
            kit.release_left_open()
            with kit.watch_connections() as left:
                name = ctx.call("declarar_filas", handed.connection.channel(), advice=_advice)
            expect(not left.created, f"`declarar_filas` abriu {len(left.created)} conexão(ões) próprias: declare as "
                                     f"filas pelo `channel` que recebeu (a fila de respostas é desta conexão).")
            self._expect_payments(cluster)
            self._expect_audit(cluster)
            self._expect_reply(cluster, handed, name)
        finally:
            handed.close()
        gone = ctx.eventually(lambda: _record(cluster, name), lambda q: q is None, timeout=2.0)
        expect(gone is None, f"A conexão que criou a fila '{name}' fechou, e a fila continua no cluster: a fila de "
                             f"respostas deve ser exclusiva (exclusive=True), para sumir com a conexão.")

    def _expect_payments(self, cluster) -> None:
        q = _record(cluster, self.payments)
        expect(q is not None, f"A fila '{self.payments}' não existe: declare-a em `declarar_filas`.")
        expect(q.get("type") == "quorum",
               f"A fila '{self.payments}' é do tipo {q.get('type')!r}. Ela precisa sobreviver à queda de qualquer "
               f"nó sem perder nenhuma mensagem confirmada: isso é uma fila quorum (uma confirmação quer dizer "
               f"'gravada na maioria das réplicas'), arguments={{'x-queue-type': 'quorum'}}."
               + (" Uma stream guarda tudo para sempre e não tem ack que tire a mensagem da fila: não é uma fila de "
                  "trabalho." if q.get("type") == "stream" else ""))
        expect(q.get("durable"), f"A fila '{self.payments}' não é durável: declare-a com durable=True.")

    def _expect_audit(self, cluster) -> None:
        q = _record(cluster, self.audit)
        expect(q is not None, f"A fila '{self.audit}' não existe: declare-a em `declarar_filas`.")
        expect(q.get("type") == "stream",
               f"A fila '{self.audit}' é do tipo {q.get('type')!r}. Vários leitores independentes, cada um lendo o "
               f"histórico inteiro, e as mensagens ficando depois de lidas: isso é uma stream "
               f"(arguments={{'x-queue-type': 'stream'}}). Numa fila {KINDS.get(q.get('type'), q.get('type'))}, a mensagem que um consumidor "
               f"confirma sai da fila — os outros não a veem.")
        expect(q.get("durable"), f"A fila '{self.audit}' não é durável: declare-a com durable=True.")

    def _expect_reply(self, cluster, handed: _Handed, name) -> None:
        expect(isinstance(name, str) and name,
               f"`declarar_filas` devolveu {name!r}; esperava o nome da fila de respostas (um str), que o broker "
               f"dá: result = channel.queue_declare(queue='', exclusive=True); return result.method.queue.")
        q = _record(cluster, name)
        expect(q is not None,
               f"`declarar_filas` devolveu {name!r}, e não há fila com esse nome no cluster. Devolva o nome que o "
               f"broker deu à fila: result.method.queue.")
        expect(name.startswith("amq.gen-"),
               f"A fila de respostas se chama {name!r}: deixe o broker dar o nome (queue=''), que ele garante único "
               f"— cada conexão tem a sua.")
        expect(q.get("exclusive"),
               f"A fila de respostas '{name}' não é exclusiva (exclusive={q.get('exclusive')}, durable="
               f"{q.get('durable')}, auto_delete={q.get('auto_delete')}): só exclusive=True a faz privada desta "
               f"conexão e a apaga quando a conexão fecha (auto_delete só a apaga depois que um consumidor dela sai).")
        # the owner may use it; any other connection gets 405 RESOURCE_LOCKED
        own = handed.connection.channel()
        try:
            own.queue_declare(queue=name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise AssertionError(f"A fila de respostas '{name}' não é da conexão do `channel` que `declarar_filas` "
                                 f"recebeu ({exc.reply_code} {exc.reply_text}): declare-a por esse `channel`.") from None
        else:
            close_quietly(own)
        with pika.BlockingConnection(cluster.params(2)) as other:
            try:
                other.channel().queue_declare(queue=name, passive=True)
                shared = True
            except pika.exceptions.ChannelClosedByBroker as exc:
                shared = exc.reply_code != 405
        expect(not shared, f"Outra conexão conseguiu usar a fila de respostas '{name}': ela deve ser exclusiva "
                           f"(exclusive=True).")


# --- 8.3 ------------------------------------------------------------------------------------------

class PublicadorResiliente(Exercise):
    id = "8.3"
    title = "Nenhuma mensagem confirmada se perdeu quando o nó líder caiu."
    points = 3
    # On 3.10, a publish that meets the election of a new leader can wait seconds for its confirm: a
    # correct answer took 11 s on an idle machine and up to 32 s on a loaded one there (4.x: 5-8 s).
    call_timeout = 45.0
    queue = "transferencias"
    total = 60
    kill_after = 20  # confirmed publishes before node 1 is killed
    min_pause = 0.09

    def _too_slow(self, client, killed) -> str:
        mine = [p for p in client.publishes if p["routing_key"] == self.queue]
        ids = Counter(getattr(p["properties"], "message_id", None) for p in mine)
        confirmed = {getattr(p["properties"], "message_id", None) for p in mine if p["failed"] is None}
        repeated = sum(n - 1 for n in ids.values() if n > 1)
        return (f"`publicar_tudo` não terminou em {self.call_timeout:.0f} s. Até ali ela publicou {len(mine)} vez(es): "
                f"{len(confirmed)} das {self.total} mensagens confirmadas, {repeated} publicação(ões) repetida(s)"
                + ("; o nó 1 já tinha caído" if killed else "") + ". Publique cada mensagem uma vez, com as "
                f"confirmações ligadas; depois de reconectar, publique de novo só as que ainda não foram confirmadas, "
                f"e volte assim que todas estiverem — sem recomeçar a lista e sem um laço que nunca acaba.")
    max_duplicates = 2

    def messages(self) -> list[tuple[str, str]]:
        return [(f"transf-{i:03d}", f"transferência {i}") for i in range(1, self.total + 1)]

    def run(self, ctx: CheckContext) -> None:
        cluster = _cluster(ctx)
        try:
            self._run(ctx, cluster)
        finally:
            cluster.restore()

    def _run(self, ctx: CheckContext, cluster) -> None:
        _quorum_led_by(cluster, self.queue, leader=1)
        messages = self.messages()
        client = _Client()
        killed: list[float] = []

        ids = {mid for mid, _ in messages}

        def after_publish(record):
            if record["routing_key"] != self.queue:
                return
            if not (record["confirming"] and kit.persistent_properties(record["properties"])
                    and getattr(record["properties"], "message_id", None) in ids):
                raise _Stop()  # the verdict is known: no need to kill the node
            if killed:
                return
            done = [p for p in client.publishes if p["routing_key"] == self.queue and p["failed"] is None]
            if len(done) >= self.kill_after:
                cluster.kill_node(1)
                killed.append(time.monotonic())
                client.refuse_next = True

        client.after_publish = after_publish
        kit.release_left_open()
        raised = None
        with kit.watch_connections() as left:
            try:
                with client:
                    returned = ctx.call("publicar_tudo", cluster.all_params(), self.queue, list(messages),
                                        advice=lambda exc: self._advice(exc, client, killed),
                                        on_timeout=lambda: self._too_slow(client, killed))
            except AssertionError as exc:
                raised = exc
            except _Stop:
                returned = None
        mine = [p for p in client.publishes if p["routing_key"] == self.queue]
        if mine and not all(p["confirming"] for p in mine):
            expect(False, f"`publicar_tudo` publicou sem as confirmações ligadas no canal: ligue-as com "
                          f"channel.confirm_delivery() em cada canal novo (também no que abrir depois de reconectar), "
                          f"antes de publicar. Sem elas, basic_publish volta antes de o broker ter a mensagem, e você "
                          f"não sabe quais se perderam quando o nó caiu." + (f" (A chamada terminou assim: {raised})"
                                                                             if raised else ""))
        if raised is not None:
            raise raised
        not_persistent = [p for p in mine if not kit.persistent_properties(p["properties"])]
        expect(not not_persistent, f"`publicar_tudo` publicou mensagens sem persistência: "
                                   f"{phrases.PERSISTENT}, também com message_id.")
        without_id = [p for p in mine if getattr(p["properties"], "message_id", None) not in ids]
        expect(not without_id, f"`publicar_tudo` publicou mensagens sem o message_id delas (o primeiro item de cada "
                               f"par): use "
                               f"pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, message_id=message_id).")
        expect(killed, f"`publicar_tudo` fez {len(mine)} publicação(ões) confirmada(s) na fila '{self.queue}'; "
                       f"esperava as {self.total} mensagens, uma a uma (a verificação derruba o nó 1 depois da "
                       f"{self.kill_after}ª confirmação).")
        self._expect_pause(client, killed[0])
        hint = _left_open_hint("publicar_tudo", left)
        expect(hint is None, hint)
        stored = kit.drain(pika.BlockingConnection(cluster.params(2)), self.queue, expected=self.total, wait=3.0)
        in_queue = Counter(getattr(p, "message_id", None) for p, _ in stored)
        missing = [mid for mid, _ in messages if mid not in in_queue]
        expect(isinstance(returned, (list, tuple)),
               f"`publicar_tudo` devolveu {type(returned).__name__}; esperava a lista dos message_id que o broker "
               f"confirmou.")
        fake = [mid for mid in returned if mid not in in_queue]
        expect(not fake, f"`publicar_tudo` devolveu como confirmados {fake[:3]}, que não estão na fila: só conte um "
                         f"message_id depois que basic_publish voltar sem erro (com as confirmações ligadas, é quando "
                         f"o broker o confirmou).")
        expect(not missing,
               f"Faltam {len(missing)} das {self.total} mensagens na fila (por exemplo {missing[:3]}). O nó 1 caiu "
               f"depois da {self.kill_after}ª confirmação: depois de reconectar, publique de novo a mensagem cuja "
               f"publicação falhou e continue com as seguintes, até a última.")
        duplicates = sum(n - 1 for n in in_queue.values() if n > 1)
        expect(duplicates <= self.max_duplicates,
               f"A fila tem {duplicates} duplicatas (por exemplo {[m for m, n in in_queue.items() if n > 1][:3]}): "
               f"depois de reconectar, publique de novo só o que ainda não foi confirmado — as {self.kill_after} "
               f"primeiras já estavam confirmadas, gravadas na maioria das réplicas, e sobreviveram à queda do nó.")
        expect(sorted(set(returned)) == sorted(ids),
               f"`publicar_tudo` devolveu {len(set(returned))} message_id distintos; esperava os {self.total}, todos "
               f"confirmados.")

    def _expect_pause(self, client: _Client, killed_at: float) -> None:
        refused = client.refused
        if not refused:
            return  # it never tried to reconnect: what is missing from the queue says so
        after = [a for a in client.attempts if a["at"] > refused[0]["at"]]
        expect(after, "A primeira tentativa de reconexão falhou e `publicar_tudo` não tentou de novo.")
        pause = after[0]["at"] - refused[0]["ended"]
        expect(pause >= self.min_pause,
               f"Depois de uma tentativa de conexão que falhou, `publicar_tudo` tentou de novo {pause * 1000:.0f} ms "
               f"depois: espere antes de tentar de novo, uma pausa curta que cresce a cada tentativa (0,1 s, 0,2 s, "
               f"0,4 s... — time.sleep), e desista depois de algumas. Sem pausa, um cliente (ou mil) martela um "
               f"cluster que está se recuperando.")

    def _advice(self, exc: BaseException, client: _Client, killed: list) -> str | None:
        sentence = _advice(exc)
        if sentence or not killed or not isinstance(exc, pika.exceptions.AMQPConnectionError):
            return sentence
        after = [a for a in client.attempts if a["at"] > killed[0]]
        if not after:
            return (f"O nó 1 — o da sua conexão e o líder da fila — caiu depois da {self.kill_after}ª confirmação (a "
                    f"verificação o derrubou), e a exceção subiu. Capture pika.exceptions.AMQPConnectionError (e "
                    f"AMQPChannelError), reconecte com a lista de nós, pika.BlockingConnection(nos), e continue do que "
                    f"não foi confirmado.")
        if all(_single_node(a["parameters"]) for a in after):
            return ("Depois da queda do nó 1, `publicar_tudo` tentou reconectar a um nó só: passe a lista inteira, "
                    "pika.BlockingConnection(nos) — o pika tenta os nós em ordem, e o nó 1 está fora.")
        if len(after) == 1 and client.refused:
            return ("A primeira tentativa de reconexão falhou (a verificação a recusou de propósito, como quando o "
                    "cluster ainda não responde) e `publicar_tudo` desistiu: tente de novo, algumas vezes, com uma "
                    "pausa curta que cresce entre as tentativas.")
        return None


# --- 8.4 ------------------------------------------------------------------------------------------

class _Processar:
    """The `processar` handed to the learner: records each call (id, start, end); at the `kill_at`-th call
    it kills node 1 before returning; after the `late_after`-th distinct id it starts `late()` in a thread.
    Once `stop` is set (the verdict is known), it raises `_Stop`."""

    def __init__(self, cluster, kill_at: int, late_after: int, late) -> None:
        self.cluster = cluster
        self.kill_at = kill_at
        self.late_after = late_after
        self.late = late
        self.calls: list[tuple[Any, float, float]] = []
        self.killed: list[float] = []
        self.thread: threading.Thread | None = None
        self.stop = False
        self.wrong = lambda: False
        self.altered: list[tuple[Any, Any]] = []  # (message_id, body) calls whose body is not the one sent

    def __call__(self, message_id, body) -> None:
        if self.stop or self.wrong():
            raise _Stop()
        started = time.monotonic()
        if body != f"pedido {message_id}".encode():  # what ConsumidorResiliente._publish sent, as bytes
            self.altered.append((message_id, body))
        if len(self.calls) + 1 == self.kill_at and not self.killed:
            self.cluster.kill_node(1)
            self.killed.append(time.monotonic())
        self.calls.append((message_id, started, time.monotonic()))
        if self.thread is None and len({c[0] for c in self.calls}) >= self.late_after:
            self.thread = threading.Thread(target=self.late, daemon=True)
            self.thread.start()

    def ended(self) -> dict:
        """message_id -> end of its first processing call."""
        out: dict = {}
        for mid, _, end in self.calls:
            out.setdefault(mid, end)
        return out


class ConsumidorResiliente(Exercise):
    id = "8.4"
    title = "Cada pedido processado uma vez, mesmo com o nó do consumidor caindo no meio."
    points = 3
    call_timeout = 45.0  # as 8.3: a new leader's election is slower on 3.10
    queue = "entregas"
    total = 30

    def _too_slow(self, processar) -> str:
        done = {c[0] for c in processar.calls}
        return (f"`consumir_tudo` não terminou em {self.call_timeout:.0f} s, com {len(done)} das {self.total} "
                f"mensagens processadas. Consuma com inactivity_timeout (um None quer dizer 'nada chegou ainda', "
                f"não 'acabou'), reconecte com a lista quando o nó cair, e volte assim que processar {self.total} "
                f"message_id distintos.")
    late = 3          # published by the check once the others were processed, after a pause
    late_delay = 0.8  # longer than the consumer's inactivity_timeout
    max_timeout = 0.5
    prefetch = 10
    kill_at = 8

    def ids(self) -> list[str]:
        return [f"entrega-{i:03d}" for i in range(1, self.total + 1)]

    def run(self, ctx: CheckContext) -> None:
        cluster = _cluster(ctx)
        try:
            self._run(ctx, cluster)
        finally:
            cluster.restore()

    @staticmethod
    def _publish(cluster, queue: str, ids: list[str], via: int = 2) -> None:
        with pika.BlockingConnection(cluster.params(via)) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            for mid in ids:
                channel.basic_publish(exchange="", routing_key=queue, body=f"pedido {mid}",
                                      properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                                                      message_id=mid))

    def _run(self, ctx: CheckContext, cluster) -> None:
        _quorum_led_by(cluster, self.queue, leader=2)
        ids = self.ids()
        first, rest = ids[:-self.late], ids[-self.late:]
        self._publish(cluster, self.queue, first)

        def late():
            time.sleep(self.late_delay)
            try:
                self._publish(cluster, self.queue, rest)
            except Exception:  # noqa: BLE001 - the hint says what is missing
                pass

        processar = _Processar(cluster, self.kill_at, len(first), late)
        client, watch = _Client(), PikaWatch()

        def on_event(what, detail):
            if what == "consume" and detail[1]:  # auto_ack=True: the verdict is known
                processar.stop = True

        def consumed_wrong():
            last = client.consumes[-1] if client.consumes else None
            return last is not None and (self.prefetch not in last["prefetch"] or last["how"] != "consume"
                                         or last["inactivity_timeout"] is None
                                         or last["inactivity_timeout"] > self.max_timeout)

        processar.wrong = consumed_wrong

        watch.on_event = on_event
        kit.release_left_open()
        with kit.watch_connections() as left:
            with watch:
                with client:
                    returned_error = None
                    try:
                        kit.call(ctx, "consumir_tudo", cluster.all_params(), self.queue, processar, self.total,
                                 advice=lambda exc: self._advice(exc, processar),
                                 on_timeout=lambda: self._too_slow(processar))
                    except AssertionError as exc:
                        returned_error = exc
                    except _Stop:
                        pass
        if processar.thread is not None:
            processar.thread.join(timeout=5)
        expect(not watch.auto_ack(), f"`consumir_tudo` consumiu com auto_ack=True: o broker esquece cada mensagem "
                                     f"assim que a entrega, e as que estavam a caminho se perdem quando o nó cai. "
                                     f"{phrases.MANUAL_ACK}")
        counts = Counter(c[0] for c in processar.calls)
        twice = [mid for mid, n in counts.items() if n > 1]
        expect(not twice, f"`processar` foi chamada {counts[twice[0]] if twice else 0} vezes para {twice[:3]}: depois "
                          f"da queda, o broker entregou de novo a mensagem cujo ack se perdeu (redelivered=True). Guarde "
                          f"os message_id já processados (um set) e, para um que já está lá, só confirme com basic_ack, "
                          f"sem processar de novo.")
        if returned_error is not None:
            raise returned_error
        if processar.altered:
            mid, body = processar.altered[0]
            expect(False, f"`processar` recebeu, para {mid!r}, o corpo {body!r} ({type(body).__name__}); esperava o corpo "
                          f"como veio do broker, os bytes {f'pedido {mid}'.encode()!r}: passe `body` sem convertê-lo.")
        self._expect_prefetch_and_timeout(client)
        ended = processar.ended()
        early = []
        for s in watch.settles:
            if s.kind != "basic_ack":
                continue
            for body in s.bodies:
                mid = kit.body_text(body).removeprefix("pedido ")
                if mid not in ended or ended[mid] > s.at:
                    early.append(mid)
        expect(not early, f"`consumir_tudo` confirmou {early[:3]} antes de `processar` terminar com elas: se o nó cair "
                          f"entre o ack e o fim do processamento, a mensagem se perde. Chame processar(message_id, "
                          f"corpo) primeiro e só então ch.basic_ack(delivery_tag=method.delivery_tag).")
        expect(processar.killed, f"`consumir_tudo` processou {len(processar.calls)} mensagem(ns); esperava as "
                                 f"{self.total} (a verificação derruba o nó 1 na {self.kill_at}ª).")
        missing = [mid for mid in ids if mid not in counts]
        expect(not missing,
               f"`consumir_tudo` voltou com {len(counts)} das {self.total} mensagens processadas (faltam {missing[:3]}"
               f"{'...' if len(missing) > 3 else ''}). Um inactivity_timeout sem mensagens não quer dizer que acabou: "
               f"o produtor pode ainda estar publicando. Só volte quando tiver processado `total` message_id "
               f"distintos.")
        hint = _left_open_hint("consumir_tudo", left)
        expect(hint is None, hint)
        unsettled = [key for key in watch.redelivered if key not in watch.settled]
        expect(not unsettled, f"{len(unsettled)} reentrega(s) (redelivered=True) não foram confirmadas: toda entrega "
                              f"termina em basic_ack, também a duplicata que você não processou de novo — senão ela "
                              f"volta para a fila quando a conexão fecha.")
        ready = ctx.eventually(lambda: _ready_count(cluster, self.queue, 2), lambda n: n != 0, timeout=0.4)
        expect(ready == 0, f"Ficaram {ready} mensagem(ns) em '{self.queue}' depois que a sua conexão fechou: uma entrega "
                           f"sem ack volta para a fila. Confirme toda entrega com basic_ack — também a duplicata que "
                           f"você não processou de novo.")

    def _expect_prefetch_and_timeout(self, client: _Client) -> None:
        consumes = [c for c in client.consumes if c["queue"] == self.queue]
        expect(consumes, f"`consumir_tudo` não consumiu da fila '{self.queue}' com channel.consume(...).")
        no_qos = [c for c in consumes if self.prefetch not in c["prefetch"]]
        expect(not no_qos, f"`consumir_tudo` consumiu sem channel.basic_qos(prefetch_count={self.prefetch}) no canal "
                           f"(também no canal novo, depois de reconectar): sem prefetch, o broker manda a fila inteira "
                           f"para o consumidor, e tudo volta a ser entregue quando ele cai.")
        blocking = [c for c in consumes if c["how"] != "consume" or c["inactivity_timeout"] is None
                    or c["inactivity_timeout"] > self.max_timeout]
        expect(not blocking, f"Consuma com channel.consume('{self.queue}', inactivity_timeout=...) com no máximo "
                             f"{phrases.decimal(self.max_timeout)} s (o consumo usou "
                             f"{blocking[0]['how'] if blocking else ''}, inactivity_timeout="
                             f"{blocking[0]['inactivity_timeout'] if blocking else ''}): assim o laço nunca espera para "
                             f"sempre e você confere, a cada volta, se já processou tudo.")

    def _advice(self, exc: BaseException, processar: _Processar) -> str | None:
        sentence = _advice(exc)
        if sentence or not processar.killed:
            return sentence
        if isinstance(exc, (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)):
            return (f"O nó 1 — o da sua conexão — caiu durante a {self.kill_at}ª chamada de `processar` (a verificação o "
                    f"derrubou), e a exceção subiu. Capture pika.exceptions.AMQPConnectionError e AMQPChannelError, "
                    f"reconecte com a lista de nós, pika.BlockingConnection(nos), e volte a consumir (com o prefetch).")
        return None
