"""Chapter 9 exercises: REST APIs in front of RabbitMQ (Flask, pika, Celery).

The learner's Flask apps are served by the check (`Background.serve`, a real HTTP server on a free
port) and called over HTTP with `requests`, bursts included; Celery tasks run in a REAL worker
process (`Background.celery`), started once per check run and only after every fault that the
app's or module's configuration or the HTTP answers can show was ruled out.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor


from ...background import Background
from ...errors import BrokerAuthError, CourseError
from ..checks import CheckContext, Exercise, expect
from .. import kit, phrases

HTTP_TIMEOUT = 5.0


# --- helpers (kit candidates) --------------------------------------------------------------------

HANG_HINT = ("o tratamento do pedido ficou travado (uma conexão do pika usada por várias threads ao mesmo "
             "tempo costuma travar assim).")


@contextlib.contextmanager
def _served(ctx: CheckContext, name: str, *args, hang_hint: str = HANG_HINT):
    """Call the learner's `name(*args)` (an app factory), serve the Flask app it returns on a free
    port and yield (server, background); everything is stopped at the end.

    While the app is served, the exceptions its views raise are recorded (Flask's
    `got_request_exception` signal) in `server.learner_errors`, for a 500's hint, and the app's own
    traceback logging is silenced (restored afterwards); `server.request_threads` holds the thread
    of every request (`request_started`); `server.hang_hint` says why a request that hangs hangs."""
    from flask import got_request_exception, request_started

    app = kit.call(ctx, name, *args)
    expect(callable(app) and hasattr(app, "url_map"),
           f"`{name}` deve devolver o app Flask (`app = Flask(__name__)` ... `return app`), "
           f"e devolveu {type(app).__name__}.")
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def raised(sender, exception, **extra):
        errors.append(exception)

    def started(sender, **extra):
        threads.append(threading.current_thread())

    got_request_exception.connect(raised, app, weak=False)
    request_started.connect(started, app, weak=False)
    logger = app.logger
    was_disabled = logger.disabled
    logger.disabled = True
    bg = Background(ctx.curso)
    try:
        try:
            server = bg.serve(f"api-{uuid.uuid4().hex[:6]}", app)
        except CourseError as exc:
            raise AssertionError(f"Não consegui servir o seu app: {exc}") from None
        server.learner_errors, server.request_threads, server.hang_hint = errors, threads, hang_hint
        yield server, bg
    finally:
        bg.stop_all(timeout=3, quiet=True)
        got_request_exception.disconnect(raised, app)
        request_started.disconnect(started, app)
        logger.disabled = was_disabled


def _server_log(server, lines: int = 6) -> str:
    """The last lines of a served app's log (werkzeug prints the traceback of a 500 there)."""
    tail = [line for line in server.lines() if line.strip()][-lines:]
    return ("\nÚltimas linhas do log do servidor:\n" + "\n".join(tail)) if tail else ""


def _http(server, method: str, path: str, **kwargs):
    """One HTTP request to the served app; a hang or a refused connection becomes a hint."""
    import requests

    try:
        return requests.request(method, server.url + path, timeout=HTTP_TIMEOUT, **kwargs)
    except requests.Timeout:
        raise AssertionError(f"A sua API não respondeu a {method} {path} em {HTTP_TIMEOUT:g} s: "
                             f"{getattr(server, 'hang_hint', HANG_HINT)}" + _server_log(server)) from None
    except requests.RequestException as exc:
        raise AssertionError(f"A sua API não atendeu {method} {path}: {exc.__class__.__name__}."
                             + _server_log(server)) from None


def _burst(server, requests_: list[tuple[str, str, dict]]):
    """Send the requests [(method, path, kwargs), ...] at the same time (one thread each, released
    together) and return the responses, in order; a request that failed gives the exception."""
    barrier = threading.Barrier(len(requests_))

    def one(item):
        method, path, kwargs = item
        barrier.wait(timeout=10)
        try:
            return _http(server, method, path, **kwargs)
        except AssertionError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(requests_)) as pool:
        return list(pool.map(one, requests_))


def _json_of(response, what: str) -> dict:
    try:
        data = response.json()
    except ValueError:
        data = None
    expect(isinstance(data, dict),
           f"{what}: a resposta deve ser um objeto JSON (devolva um dict no Flask), e veio "
           f"{response.text[:120]!r}.")
    return data


def _raised_in_app(server) -> str:
    """What the learner's view raised (the last exception Flask saw), as a hint, or ""."""
    import pika

    errors = getattr(server, "learner_errors", None)
    if not errors:
        return ""
    exc = errors[-1]
    text = str(exc).rstrip(".") or "(sem mensagem)"
    hint = f" O seu código levantou {type(exc).__name__}: {text}."
    if isinstance(exc, pika.exceptions.NackError):
        hint += (" É o basic_publish avisando que o broker recusou a mensagem (nack): capture "
                 "pika.exceptions.NackError (try/except) e responda 503, em vez de deixar a exceção escapar.")
    elif isinstance(exc, pika.exceptions.UnroutableError):
        hint += " A mensagem não foi roteada para fila nenhuma: declare a fila antes de publicar nela."
    return hint


def _status(response, expected: int, what: str, server) -> None:
    if response.status_code == 500:
        raised = _raised_in_app(server)
        raise AssertionError(f"{what}: a sua API respondeu 500 (uma exceção no seu código)." + raised
                             + ("" if raised else _server_log(server)))
    expect(response.status_code == expected,
           f"{what}: a sua API respondeu {response.status_code}, e o certo é {expected}.")


class _PublishLog(list):
    """(channel in confirm mode?, routing key) of each publish; `started` is set when a publish
    begins, and each publish waits `delay` seconds before it goes out (to widen a race window)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.delay = 0.0


@contextlib.contextmanager
def _publishes():
    """Record (channel in confirm mode?, routing key) of every BlockingChannel.basic_publish made in
    this process, from any thread, while the block runs (kernel side: the learner's app publishes
    from the server's request threads). A channel is in confirm mode once confirm_delivery() ran
    on it (watched here too: pika's own flag is private). The log is a `_PublishLog`."""
    import weakref

    from pika.adapters.blocking_connection import BlockingChannel

    publish, confirm = BlockingChannel.basic_publish, BlockingChannel.confirm_delivery
    confirming: weakref.WeakSet = weakref.WeakSet()
    seen = _PublishLog()

    @functools.wraps(confirm)
    def confirm_delivery(self, *args, **kwargs):
        result = confirm(self, *args, **kwargs)
        confirming.add(self)
        return result

    @functools.wraps(publish)
    def recording(self, exchange, routing_key, *args, **kwargs):
        seen.append((self in confirming, routing_key))
        seen.started.set()
        if seen.delay:
            time.sleep(seen.delay)
        return publish(self, exchange, routing_key, *args, **kwargs)

    BlockingChannel.basic_publish, BlockingChannel.confirm_delivery = recording, confirm_delivery
    try:
        yield seen
    finally:
        BlockingChannel.basic_publish, BlockingChannel.confirm_delivery = publish, confirm


def _put_policy(ctx, name: str, pattern: str, definition: dict) -> None:
    ctx.management.set_policy(name, pattern, definition, priority=10, vhost=ctx.curso.vhost)


def _delete_policy(ctx, name: str) -> None:
    try:
        ctx.management.delete_policy(name, vhost=ctx.curso.vhost)
    except BrokerAuthError:
        pass  # a user who may not set policies has none to delete


def _messages(ctx, queue: str, count: int) -> list[dict]:
    """Every ready message of `queue` (bodies and properties), read through the management API
    and requeued in place."""
    return ctx.management.peek(queue, count)


@contextlib.contextmanager
def _celery_module(ctx, bg: Background, module: str, code: str):
    """Write `code` as `module` into bg's folder and import it in this process with
    CELERY_BROKER_URL set to the sandbox's URL (as the worker will have it); the variable is
    restored afterwards."""
    from kombu import pools

    bg.write(f"{module}.py", code)
    # kombu's producer pools are process-wide, keyed by broker URL, and remember the exchanges their
    # connections declared: after the snapshot deleted them, a pooled producer would not declare
    # them again (a second run of the check in the same kernel would publish to nowhere)
    pools.reset()
    previous = os.environ.get("CELERY_BROKER_URL")
    os.environ["CELERY_BROKER_URL"] = ctx.curso.url
    try:
        try:
            imported = bg.import_module(module)
        except Exception as exc:  # noqa: BLE001 - the learner's module: reported as a hint
            raise AssertionError(f"Importar o seu módulo levantou {exc.__class__.__name__}: {exc}") from None
    finally:
        if previous is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = previous
    yield imported


def _start_worker(bg: Background, module: str):
    try:
        return bg.celery("worker", module, ready_timeout=30)
    except CourseError as exc:
        raise AssertionError(f"O worker Celery não subiu com o seu módulo: {exc}") from None


def _celery_header(message: dict, name: str):
    return ((message.get("properties") or {}).get("headers") or {}).get(name)


# --- 9.1 -----------------------------------------------------------------------------------------

class Relatorios(Exercise):
    """POST /relatorios publishes with confirms and answers 202, an id and a Location."""

    id = "9.1"
    title = "A API aceita o pedido e responde 202."
    points = 3
    queue = "relatorios"
    policy = "ex91-limite"
    burst = 20

    def snapshot(self, ctx):
        _delete_policy(ctx, self.policy)
        ctx.management.delete_queue(self.queue)

    def _post(self, server, body, what, response=None):
        if response is None:
            response = _http(server, "POST", "/relatorios", json=body)
        if isinstance(response, BaseException):
            raise response
        _status(response, 202, what, server)
        data = _json_of(response, what)
        ident = data.get("id")
        expect(isinstance(ident, str) and ident,
               f"{what}: a resposta deve trazer o id do pedido como texto, {{\"id\": \"...\"}}, e veio {data!r}.")
        location = response.headers.get("Location", "")
        expect(location.endswith(f"/relatorios/{ident}"),
               f"{what}: a resposta 202 deve dizer onde acompanhar o pedido, no cabeçalho "
               f"Location: /relatorios/{ident} — veio {location or 'nenhum'!r}.")
        return ident

    def run(self, ctx):
        with _served(ctx, "criar_app", ctx.curso.url) as (server, _bg), _publishes() as published:
            try:
                kit.release_left_open()
                with kit.watch_connections() as left:
                    ids = self._requests(ctx, server)
            finally:
                kit.release_left_open()  # the leaked connections are the check's to close now
            expect(not left,
                   f"Depois de {len(ids)} pedidos atendidos, a sua API deixou {len(left)} conexão(ões) com o "
                   f"RabbitMQ aberta(s) (abriu {len(left.created)}): cada pedido que abre uma conexão deve "
                   f"fechá-la antes de responder — use `with pika.BlockingConnection(...) as connection:`, "
                   f"senão cada pedido deixa uma conexão para trás, até o broker recusar novas.")
            self._check_queue(ctx, ids)
            self._confirmed(ctx, server, ids, published)

    def _requests(self, ctx, server) -> dict:
        """One POST, then a burst at the same time: {id: body} of the accepted ones."""
        first = {"tipo": "vendas", "mes": "2024-05"}
        ids = {self._post(server, first, "Um POST /relatorios sozinho"): first}
        counts = kit.exact_counts(ctx, self.queue)
        expect(counts is not None,
               f"Depois do POST, a fila durável '{self.queue}' não existe: declare-a "
               f"(queue_declare(queue='{self.queue}', durable=True)) e publique nela.")
        expect(counts[0] == 1, f"Depois de um POST aceito, a fila '{self.queue}' tem {counts[0]} "
                               f"mensagem(ns), e devia ter 1.")
        bodies = [{"tipo": "estoque", "mes": "2024-06", "n": i} for i in range(self.burst)]
        responses = _burst(server, [("POST", "/relatorios", {"json": b}) for b in bodies])
        for body, response in zip(bodies, responses):
            try:
                ident = self._post(server, None, f"Numa rajada de {self.burst} POSTs ao mesmo tempo", response)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc} Um POST sozinho funcionou e a rajada não: o Flask atende cada pedido "
                    f"numa thread, e uma conexão do pika não pode ser usada por várias threads "
                    f"(abra uma conexão por pedido, ou uma por thread).") from None
            expect(ident not in ids, f"Dois pedidos receberam o mesmo id {ident!r}: cada pedido "
                                     f"precisa de um id novo (uuid.uuid4()).")
            ids[ident] = body
        return ids

    def _confirmed(self, ctx, server, ids, published):
        unconfirmed = sum(1 for confirming, key in published if key == self.queue and not confirming)
        expect(not unconfirmed,
               f"{unconfirmed} das publicações na fila '{self.queue}' foram feitas num canal sem publisher "
               f"confirms: chame channel.confirm_delivery() no canal antes de publicar, para saber se o "
               f"broker guardou a mensagem antes de responder 202.")
        # with confirms, a message the broker refuses is known to the API: it must not say 202
        try:
            _put_policy(ctx, self.policy, f"^{self.queue}$", {"max-length": len(ids), "overflow": "reject-publish"})
        except BrokerAuthError:
            return  # a grading user may not set policies: the confirms were checked above
        try:
            self._wait_policy(ctx)
            response = _http(server, "POST", "/relatorios", json={"tipo": "vendas", "mes": "2024-07"})
        finally:
            _delete_policy(ctx, self.policy)
        expect(response.status_code != 202,
               f"A fila '{self.queue}' estava cheia e recusou a mensagem (o broker respondeu nack), "
               f"e mesmo assim a sua API respondeu 202. Publique com publisher confirms "
               f"(channel.confirm_delivery()): basic_publish então levanta NackError, e a API responde "
               f"503 em vez de prometer um pedido que não foi guardado.")
        _status(response, 503, "Com a fila cheia (o broker recusou a mensagem)", server)

    def _wait_policy(self, ctx) -> None:
        """Until the queue's record shows the policy in force (bounded)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            queue = ctx.management.queue_or_none(self.queue) or {}
            if (queue.get("effective_policy_definition") or {}).get("overflow") == "reject-publish":
                return
            time.sleep(0.1)

    def _check_queue(self, ctx, ids: dict) -> None:
        count = kit.counts_of(ctx, self.queue)[0]
        expect(count == len(ids), f"A API aceitou {len(ids)} pedidos (202), e a fila '{self.queue}' tem "
                                  f"{count} mensagem(ns): cada 202 deve corresponder a exatamente uma mensagem.")
        for message in _messages(ctx, self.queue, len(ids) + 5):
            properties = message.get("properties") or {}
            ident = properties.get("message_id")
            expect(ident in ids, f"Uma mensagem da fila '{self.queue}' tem message_id {ident!r}, que não é o "
                                 f"id de nenhuma resposta: publique com "
                                 f"pika.BasicProperties(message_id=<o id devolvido>).")
            expect(kit.is_persistent(message),
                   f"A mensagem do pedido {ident} não é persistente: use "
                   f"delivery_mode=pika.DeliveryMode.Persistent nas propriedades.")
            try:
                body = json.loads(message.get("payload", ""))
            except ValueError:
                body = message.get("payload")
            expect(body == ids[ident], f"A mensagem do pedido {ident} leva {body!r}, e o corpo JSON do POST "
                                       f"era {ids[ident]!r}: publique o JSON recebido (json.dumps(...)).")

    def verify(self, ctx):
        queue = kit.expect_durable_queue(ctx, self.queue, "criar_app")
        count = kit.counts_of(ctx, self.queue)[0]
        expected = self.burst + 1
        expect(count == expected, f"A fila '{self.queue}' tem {count} mensagem(ns) depois da verificação, e "
                                  f"devia ter {expected} (um POST e uma rajada de {self.burst}; o POST com a "
                                  f"fila cheia não entra).")
        messages = _messages(ctx, self.queue, count + 5)
        idents = [(m.get("properties") or {}).get("message_id") for m in messages]
        expect(all(idents) and len(set(idents)) == len(idents),
               f"As mensagens da fila '{self.queue}' precisam de message_id únicos (o id de cada pedido).")
        expect(all(kit.is_persistent(m) for m in messages),
               f"Há mensagens não persistentes na fila '{self.queue}': use delivery_mode=pika.DeliveryMode.Persistent.")
        del queue


# --- 9.2 -----------------------------------------------------------------------------------------

TASKS_92 = '''
import os
import time

from celery import Celery
from kombu import Exchange, Queue

app = Celery("tarefas_ex92", broker=os.environ["CELERY_BROKER_URL"], backend="rpc://")
app.conf.task_queues = [Queue("tarefas", Exchange("tarefas", type="topic"), routing_key="tarefas",
                              queue_arguments={"x-queue-type": "quorum"})]
app.conf.task_default_queue = "tarefas"
app.conf.task_default_exchange = "tarefas"
app.conf.task_default_exchange_type = "topic"
app.conf.task_default_routing_key = "tarefas"
app.conf.broker_connection_retry_on_startup = True


@app.task
def processar(n):
    time.sleep(0.3)
    if n < 0:
        raise ValueError(f"n negativo: {n}")
    return n * n
'''


class _TaskProxy:
    """The check's task, handed to the learner's `criar_app`: records the thread of every call that
    talks to Celery (`delay`, `apply_async`, `AsyncResult`, and any use of the results these
    return but their id) and delegates everything else. `slow` seconds are waited before each
    submission, so that submissions sent together overlap."""

    def __init__(self, task) -> None:
        self._task = task
        self.calls: list[tuple[str, threading.Thread]] = []
        self.slow = 0.0

    def _seen(self, what: str) -> None:
        self.calls.append((what, threading.current_thread()))

    def delay(self, *args, **kwargs):
        self._seen("delay")
        if self.slow:
            time.sleep(self.slow)
        return _ResultProxy(self._task.delay(*args, **kwargs), self)

    def apply_async(self, *args, **kwargs):
        self._seen("apply_async")
        if self.slow:
            time.sleep(self.slow)
        return _ResultProxy(self._task.apply_async(*args, **kwargs), self)

    def AsyncResult(self, *args, **kwargs):  # noqa: N802 - Celery's name
        self._seen("AsyncResult")
        return _ResultProxy(self._task.AsyncResult(*args, **kwargs), self)

    def __call__(self, *args, **kwargs):
        return self._task(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._task, name)


class _ResultProxy:
    """An AsyncResult that tells its `_TaskProxy` from which thread it is read (its id aside). A
    `get()` without a timeout is given one, so that a request left hanging ends with the check."""

    def __init__(self, result, owner: _TaskProxy) -> None:
        self._result, self._owner = result, owner

    def __getattr__(self, name):
        value = getattr(self._result, name)
        if name in ("id", "task_id"):
            return value
        self._owner._seen(f"AsyncResult.{name}")
        if name == "get":
            @functools.wraps(value)
            def get(*args, **kwargs):
                if not args and kwargs.get("timeout") is None:
                    kwargs["timeout"] = HTTP_TIMEOUT + 1
                return value(*args, **kwargs)
            return get
        return value


def _celery_threads_hint(task: _TaskProxy, server) -> str | None:
    """Why the learner's API talks to Celery from the wrong threads, or None: every call must come
    from ONE thread, and not from a request's."""
    threads = {id(thread): thread for _, thread in task.calls}
    requests_ = {id(thread) for thread in server.request_threads}
    in_requests = sorted({what for what, thread in task.calls if id(thread) in requests_})
    if len(threads) <= 1 and not in_requests:
        return None
    where = (f" ({', '.join(in_requests)} dentro da thread do próprio pedido)" if in_requests else "")
    return (f"A sua API falou com o Celery de {len(threads)} thread(s) diferente(s){where}. Com "
            f"backend=\"rpc://\", o resultado volta para a fila de respostas de quem enviou a tarefa, e o "
            f"Celery abre uma fila de respostas por thread; o Flask atende cada pedido numa thread nova, então "
            f"o GET pode nunca ver o resultado. Fale com o Celery de uma thread só, que não seja a de um "
            f"pedido: um ThreadPoolExecutor(max_workers=1) criado junto com o app, e executor.submit(...).result() "
            f"para o delay() e para ler o AsyncResult.")


HANG_HINT_92 = ("o pedido ficou travado. Um get() (ou .result de um futuro) sem timeout espera o worker "
                "terminar a tarefa — e pode não haver worker nenhum rodando: leia o estado com .state e "
                "responda na hora, sem bloquear dentro do tratamento de um pedido.")



class Acompanhar(Exercise):
    """POST /tarefas submits with delay(); GET /tarefas/<id> follows the task to its end."""

    id = "9.2"
    title = "O estado da tarefa, do PENDING ao SUCCESS."
    points = 3
    queue = "tarefas"
    module = "tarefas_ex92"

    def snapshot(self, ctx):
        kit.reset_topology(ctx, exchanges=["tarefas"], queues=[self.queue])

    def _submit(self, server, n):
        what = f"POST /tarefas com {{\"n\": {n}}}"
        response = _http(server, "POST", "/tarefas", json={"n": n})
        _status(response, 202, what, server)
        data = _json_of(response, what)
        ident = data.get("id")
        expect(isinstance(ident, str) and ident,
               f"{what}: a resposta deve trazer o id da tarefa, {{\"id\": resultado.id}}, e veio {data!r}.")
        return ident

    def _queued(self, ctx, expected):
        counts = kit.exact_counts(ctx, self.queue)
        ready = counts[0] if counts else 0
        expect(ready == expected,
               f"Depois de {expected} POST(s) aceito(s), a fila '{self.queue}' do Celery tem {ready} "
               f"mensagem(ns), e devia ter {expected} (nenhum worker rodava ainda): o POST deve enfileirar "
               f"a tarefa com processar.delay(n), não executá-la na própria API.")

    def _state(self, server, ident, what):
        response = _http(server, "GET", f"/tarefas/{ident}")
        _status(response, 200, what, server)
        data = _json_of(response, what)
        expect(set(data) >= {"estado", "resultado"},
               f"{what}: a resposta deve ter os campos \"estado\" e \"resultado\", e veio {data!r}.")
        return data

    def _together(self, server, task: _TaskProxy, ok: str) -> list[str]:
        """Two POSTs and two GETs sent at the same time, each submission slowed down so that they
        overlap: the ids of the tasks the POSTs enqueued."""
        task.slow = 0.3
        try:
            responses = _burst(server, [("POST", "/tarefas", {"json": {"n": 2}}), ("GET", f"/tarefas/{ok}", {}),
                                        ("POST", "/tarefas", {"json": {"n": 3}}), ("GET", f"/tarefas/{ok}", {})])
        finally:
            task.slow = 0.0
        what = "Dois POSTs e dois GETs ao mesmo tempo"
        ids = []
        for i, response in enumerate(responses):
            if isinstance(response, BaseException):
                raise response
            if i % 2 == 0:
                _status(response, 202, f"{what}, um POST", server)
                ids.append(_json_of(response, what).get("id"))
            else:
                _status(response, 200, f"{what}, um GET", server)
        return ids

    def run(self, ctx):
        bg = Background(ctx.curso)
        try:
            with _celery_module(ctx, bg, self.module, TASKS_92) as tarefas, \
                    _served(ctx, "criar_app", task := _TaskProxy(tarefas.processar),
                            hang_hint=HANG_HINT_92) as (server, _):
                ok = self._submit(server, 7)
                self._queued(ctx, 1)
                bad = self._submit(server, -1)
                expect(ok != bad, "Duas tarefas receberam o mesmo id: devolva o id de cada `delay()`.")
                self._queued(ctx, 2)
                ids = [_celery_header(m, "id") for m in _messages(ctx, self.queue, 5)]
                expect(sorted(ids) == sorted([ok, bad]),
                       f"Os ids devolvidos pela API ({ok!r}, {bad!r}) não são os das tarefas na fila "
                       f"({', '.join(map(repr, ids))}): devolva resultado.id de `processar.delay(n)`.")
                for ident, what in ((ok, "Antes de qualquer worker rodar, GET /tarefas/<id>"),
                                    ("nao-existe-" + uuid.uuid4().hex[:8], "GET /tarefas/<um id desconhecido>")):
                    data = self._state(server, ident, what)
                    expect(data["estado"] == "PENDING" and data["resultado"] is None,
                           f"{what} deve responder {{\"estado\": \"PENDING\", \"resultado\": null}} (o Celery "
                           f"não distingue uma tarefa na fila de um id desconhecido), e veio {data!r}.")
                extra = self._together(server, task, ok)
                self._queued(ctx, 2 + len(extra))
                hint = _celery_threads_hint(task, server)
                expect(hint is None, hint)
                worker = _start_worker(bg, self.module)
                deadline, finished = time.monotonic() + 15, None
                while True:
                    states = [self._state(server, i, "GET /tarefas/<id>") for i in (ok, bad, *extra)]
                    if all(s["estado"] not in ("PENDING", "STARTED") for s in states) or time.monotonic() > deadline:
                        break
                    done = worker.output().count("succeeded in") + worker.output().count("raised unexpected")
                    if done >= len(states):  # the worker ran them all: the results are on their way, or lost
                        finished = finished or time.monotonic()
                        if time.monotonic() - finished > 2:
                            break
                    time.sleep(0.2)
                done = worker.output().count("succeeded in") + worker.output().count("raised unexpected")
                expect(states[0]["estado"] != "PENDING" or done < len(states),
                       "O worker já executou as tarefas (veja o log dele), e o GET ainda responde "
                       "PENDING. Com backend=\"rpc://\", o resultado volta para a fila de respostas de quem "
                       "enviou a tarefa, e o Celery abre uma por thread; o Flask atende cada pedido numa "
                       "thread nova. Fale com o Celery de uma thread só (um ThreadPoolExecutor(max_workers=1) "
                       "para o delay() e para ler o AsyncResult).")
                expect(states[0] == {**states[0], "estado": "SUCCESS", "resultado": 49},
                       f"A tarefa processar(7) terminou: GET /tarefas/<id> deve responder "
                       f"{{\"estado\": \"SUCCESS\", \"resultado\": 49}}, e veio {states[0]!r}.")
                estado, resultado = states[1]["estado"], states[1]["resultado"]
                shape = (" — esse é o repr() da exceção; o texto dela é str(resultado.result)"
                         if isinstance(resultado, str) and resultado.startswith("ValueError(") else "")
                expect(estado == "FAILURE" and resultado == "n negativo: -1",
                       f"A tarefa processar(-1) levantou ValueError('n negativo: -1'): GET /tarefas/<id> deve "
                       f"responder {{\"estado\": \"FAILURE\", \"resultado\": \"n negativo: -1\"}} (o texto da "
                       f"exceção, str(resultado.result)), e veio {states[1]!r}{shape}.")
                hint = _celery_threads_hint(task, server)
                expect(hint is None, hint)
        finally:
            bg.stop_all(timeout=3, quiet=True)

    def verify(self, ctx):
        queue = ctx.management.queue_or_none(self.queue)
        expect(queue is not None, phrases.queue_missing(self.queue) + " Nenhuma tarefa foi enfileirada com delay().")
        counts = kit.counts_of(ctx, self.queue)
        expect(counts[0] == 0, f"A fila '{self.queue}' ainda tem {counts[0]} tarefa(s): o worker não as executou.")


# --- 9.3 -----------------------------------------------------------------------------------------

SERVICE_93 = '''
"""A flaky payment service, written by the check: fails as `falhas.json` says, logs every call."""
import json
import time

REGISTRO = {registro!r}
FALHAS = {falhas!r}


class ErroPermanente(ValueError):
    """A refusal that trying again will not fix (a card number that does not exist)."""


def chamar_servico(pedido):
    with open(REGISTRO, "a", encoding="utf-8") as f:
        f.write(json.dumps([pedido, time.time()]) + "\\n")
    with open(REGISTRO, encoding="utf-8") as f:
        tentativas = sum(1 for linha in f if json.loads(linha)[0] == pedido)
    falhas = FALHAS.get(pedido, 0)
    if falhas == "permanente":
        raise ErroPermanente(f"pedido {{pedido}} recusado")
    if tentativas <= falhas:
        raise ConnectionError(f"serviço fora do ar (tentativa {{tentativas}})")
    return f"pago {{pedido}}"
'''


class Retentativas(Exercise):
    """A Celery task that retries transient failures with exponential backoff, and gives up."""

    id = "9.3"
    title = "Falhas passageiras, novas tentativas e recuo exponencial."
    points = 3
    queue = "cobrancas"
    module = "tarefas_cobranca"
    # pedido -> failures injected: recovers after 2, never recovers, a permanent refusal
    plan = {"p-recupera": 2, "p-fora-do-ar": 99, "p-recusado": "permanente"}

    def snapshot(self, ctx):
        kit.reset_topology(ctx, exchanges=[self.queue], queues=[self.queue])

    def _static(self, module, servico):
        tarefa = getattr(module, "cobrar", None)
        expect(tarefa is not None and hasattr(tarefa, "delay"),
               "O seu módulo deve definir a tarefa `cobrar` com @app.task(...).")
        app = getattr(module, "app", None)
        expect(app is not None and getattr(tarefa, "app", None) is app,
               "O seu módulo deve criar o app Celery com o nome `app` e definir `cobrar` com @app.task.")
        queues = {q.name: q for q in (app.conf.task_queues or [])}
        fila = queues.get(self.queue)
        expect(fila is not None and app.conf.task_default_queue == self.queue,
               f"As tarefas devem ir para a fila '{self.queue}': declare-a em app.conf.task_queues e "
               f"ponha app.conf.task_default_queue = '{self.queue}' (e exchange e routing key iguais).")
        expect((fila.queue_arguments or {}).get("x-queue-type") == "quorum",
               f"A fila '{self.queue}' deve ser quorum (queue_arguments={{\"x-queue-type\": \"quorum\"}}): "
               f"é com quorum que o Celery faz as esperas entre tentativas no próprio broker.")
        expect(fila.exchange is not None and fila.exchange.type == "topic" and app.conf.task_default_exchange_type == "topic",
               "A exchange das tarefas deve ser do tipo topic (Exchange(..., type=\"topic\") e "
               "task_default_exchange_type = \"topic\"): com uma direct, a espera entre tentativas trava o worker.")
        retry_for = tuple(getattr(tarefa, "autoretry_for", ()) or ())
        expect(any(issubclass(ConnectionError, kind) for kind in retry_for),
               "A tarefa deve tentar de novo sozinha quando o serviço falha com ConnectionError: "
               "@app.task(autoretry_for=(ConnectionError,), ...).")
        expect(not any(issubclass(servico.ErroPermanente, kind) for kind in retry_for),
               f"autoretry_for={retry_for!r} também pega ErroPermanente: uma recusa definitiva não melhora "
               f"tentando de novo. Liste só a falha passageira, autoretry_for=(ConnectionError,).")
        default = (" — sem max_retries, o Celery usa o padrão dele, 3: dê max_retries=2 no @app.task"
                   if tarefa.max_retries == 3 else "")
        expect(tarefa.max_retries == 2,
               f"A tarefa deve desistir depois de 2 novas tentativas (max_retries=2), e tem "
               f"max_retries={tarefa.max_retries!r}{default}.")
        backoff = getattr(tarefa, "retry_backoff", False)
        expect(backoff is True or (isinstance(backoff, (int, float)) and not isinstance(backoff, bool) and backoff == 1),
               f"As esperas devem dobrar a partir de 1 s (retry_backoff=1), e a tarefa tem retry_backoff={backoff!r}.")
        expect(getattr(tarefa, "retry_jitter", True) is False,
               "Sem sorteio nas esperas (retry_jitter=False): com o jitter ligado (o padrão), cada espera é "
               "um número ao acaso entre 0 e o recuo, e a verificação não pode medir o recuo.")

    def run(self, ctx):
        codigo = ctx.learner("CODIGO_TAREFAS", "variável")
        if isinstance(codigo, str) and "NotImplementedError" in codigo and "cobrar" not in codigo:
            raise AssertionError(phrases.not_implemented("CODIGO_TAREFAS"))
        expect(isinstance(codigo, str) and "cobrar" in codigo,
               "CODIGO_TAREFAS deve ser o texto do módulo com o app Celery e a tarefa `cobrar`.")
        bg = Background(ctx.curso)
        try:
            registro = bg.folder / "chamadas.jsonl"
            bg.write("servico.py", SERVICE_93.format(registro=str(registro), falhas=self.plan))
            servico = bg.import_module("servico")
            with _celery_module(ctx, bg, self.module, codigo) as module:
                self._static(module, servico)
                _start_worker(bg, self.module)
                results = {p: module.cobrar.delay(p) for p in self.plan}
                outcome = {}
                for pedido, result in results.items():
                    try:
                        result.get(timeout=15, propagate=False)
                    except Exception:  # noqa: BLE001 - a timeout: the state says PENDING below
                        pass
                    outcome[pedido] = (result.state, result.result)
            calls: dict[str, list[float]] = {}
            if registro.exists():
                for line in registro.read_text(encoding="utf-8").splitlines():
                    pedido, at = json.loads(line)
                    calls.setdefault(pedido, []).append(at)
            self._judge(outcome, calls)
        finally:
            bg.stop_all(timeout=3, quiet=True)

    def _judge(self, outcome, calls):
        n = {p: len(calls.get(p, [])) for p in self.plan}
        state, value = outcome["p-recupera"]
        expect(n["p-recupera"] >= 1, "A tarefa não chamou chamar_servico(pedido): ela deve cobrar pelo serviço.")
        expect(state == "SUCCESS" and value == "pago p-recupera" and n["p-recupera"] == 3,
               f"Com o serviço falhando 2 vezes (ConnectionError) e depois respondendo, a tarefa devia "
               f"terminar em SUCCESS com o valor de chamar_servico ('pago p-recupera') na 3ª chamada; "
               f"ela terminou em {state} ({value!r}) depois de {n['p-recupera']} chamada(s). Deixe a "
               f"ConnectionError escapar da tarefa: é ela que dispara o autoretry.")
        at = calls["p-recupera"]
        pauses = [b - a for a, b in zip(at, at[1:])]
        shown = ", ".join(phrases.decimal(p) + " s" for p in pauses)
        expect(0.8 <= pauses[0] and pauses[1] >= pauses[0] + 0.6,
               f"As esperas entre as tentativas foram {shown}: com retry_backoff=1 elas dobram (1 s, 2 s).")
        state, value = outcome["p-fora-do-ar"]
        expect(state == "FAILURE" and n["p-fora-do-ar"] == 3,
               f"Com o serviço sempre fora do ar, a tarefa devia desistir em FAILURE depois de 3 chamadas "
               f"(1 + max_retries=2); terminou em {state} depois de {n['p-fora-do-ar']} chamada(s).")
        state, value = outcome["p-recusado"]
        expect(state == "FAILURE" and n["p-recusado"] == 1,
               f"Uma ErroPermanente não deve ser tentada de novo: a tarefa devia falhar (FAILURE) na 1ª "
               f"chamada; terminou em {state} depois de {n['p-recusado']} chamada(s).")

    def verify(self, ctx):
        queue = ctx.management.queue_or_none(self.queue)
        expect(queue is not None, phrases.queue_missing(self.queue) + " Nenhuma tarefa chegou ao broker.")
        expect(queue.get("type") == "quorum", f"A fila '{self.queue}' deve ser do tipo quorum.")
        expect(ctx.management.exchange_or_none("celery_delayed_delivery") is not None,
               "Não há a exchange 'celery_delayed_delivery': nenhuma nova tentativa esperou no broker "
               "(retry com recuo numa fila quorum).")
        counts = kit.counts_of(ctx, self.queue)
        expect(counts[0] == 0, f"A fila '{self.queue}' ainda tem {counts[0]} tarefa(s) esperando.")


# --- 9.4 -----------------------------------------------------------------------------------------

LOCK_HINT = ("Proteja 'ver se a chave existe, publicar e guardar a resposta' — os três juntos — com UM "
             "threading.Lock criado junto com o app (em criar_app, não um por pedido), compartilhado por "
             "todos os pedidos: uma repetição que chega enquanto o original publica espera a trava e encontra "
             "a resposta dele.")


class Idempotencia(Exercise):
    """POST /pedidos with an Idempotency-Key: a duplicate gets the same answer, one message in all."""

    id = "9.4"
    title = "Um pedido repetido entra uma vez só."
    points = 3
    queue = "pedidos"
    concurrent = 12

    def snapshot(self, ctx):
        ctx.management.delete_queue(self.queue)

    def _post(self, server, key, body, what, response=None):
        if response is None:
            headers = {} if key is None else {"Idempotency-Key": key}
            response = _http(server, "POST", "/pedidos", json=body, headers=headers)
        if isinstance(response, BaseException):
            raise response
        _status(response, 202, what, server)
        data = _json_of(response, what)
        ident = data.get("id")
        expect(isinstance(ident, str) and ident,
               f"{what}: a resposta deve trazer o id do pedido, {{\"id\": \"...\"}}, e veio {data!r}.")
        return ident

    def _count(self, ctx, expected, what):
        counts = kit.exact_counts(ctx, self.queue)
        count = counts[0] if counts else 0
        expect(counts is not None or expected == 0,
               f"Depois de {what}, a fila durável '{self.queue}' não existe: declare-a e publique nela.")
        expect(count == expected, f"Depois de {what}, a fila '{self.queue}' tem {count} mensagem(ns), e devia "
                                  f"ter {expected}: cada chave nova publica uma mensagem, uma chave repetida nenhuma.")

    def _race(self, ctx, server, published, body, before: int) -> str:
        """A new key's POST whose publish is slowed down, and the same key sent again while that
        publish is under way: the repetition may only be answered once the original's message is
        on the broker. The id both got."""
        what = "Dois POSTs com a mesma chave-R, o 2º enquanto o 1º ainda publicava"
        first: dict = {}

        def original():
            try:
                first["response"] = _http(server, "POST", "/pedidos", json=body, headers={"Idempotency-Key": "chave-R"})
            except AssertionError as exc:
                first["response"] = exc

        published.started.clear()
        published.delay = 0.3
        sender = threading.Thread(target=original, daemon=True)
        try:
            sender.start()
            published.started.wait(HTTP_TIMEOUT)
            again = _http(server, "POST", "/pedidos", json=body, headers={"Idempotency-Key": "chave-R"})
            counts = kit.exact_counts(ctx, self.queue)
            sender.join(HTTP_TIMEOUT + 1)
        finally:
            published.delay = 0.0
        ident = self._post(server, None, None, what, first.get("response", AssertionError(f"{what}: o 1º não voltou.")))
        repeated = self._post(server, None, None, what, again)
        expect(ident == repeated,
               f"{what} receberam ids diferentes ({ident!r} e {repeated!r}): as duas threads viram a chave como "
               f"nova. {LOCK_HINT}")
        self._confirmed(published)
        count = counts[0] if counts else 0
        expect(count == before + 1,
               f"{what}: a repetição recebeu 202 com o id {repeated!r} antes de a mensagem do original estar na "
               f"fila '{self.queue}' (havia {count - before} mensagem nova quando ela voltou): a API prometeu um "
               f"pedido que ainda podia se perder. {LOCK_HINT} Assim a repetição só é respondida depois que a "
               f"publicação do original foi confirmada.")
        return ident

    def _confirmed(self, published) -> None:
        unconfirmed = sum(1 for confirming, key in published if key == self.queue and not confirming)
        expect(not unconfirmed,
               f"{unconfirmed} das publicações na fila '{self.queue}' foram feitas num canal sem publisher "
               f"confirms: chame channel.confirm_delivery() no canal antes de publicar (como em 9.1), para só "
               f"responder 202 depois que o broker guardou a mensagem.")

    def run(self, ctx):
        with _served(ctx, "criar_app", ctx.curso.url) as (server, _), _publishes() as published:
            body = {"item": "livro", "quantidade": 1}
            first = self._post(server, "chave-A", body, "O 1º POST com Idempotency-Key: chave-A")
            again = self._post(server, "chave-A", body, "O 2º POST com a mesma chave-A")
            expect(again == first, f"O mesmo pedido (Idempotency-Key: chave-A) enviado duas vezes recebeu ids "
                                   f"diferentes ({first!r} e {again!r}): a repetição deve devolver a mesma resposta.")
            self._count(ctx, 1, "dois POSTs com a mesma chave")
            raced = self._race(ctx, server, published, body, 1)
            self._count(ctx, 2, "dois POSTs com a mesma chave-R")
            responses = _burst(server, [("POST", "/pedidos", {"json": body, "headers": {"Idempotency-Key": "chave-B"}})]
                               * self.concurrent)
            burst = {self._post(server, None, None, f"{self.concurrent} POSTs ao mesmo tempo com a chave-B", r)
                     for r in responses}
            expect(len(burst) == 1,
                   f"{self.concurrent} POSTs ao mesmo tempo com a mesma chave-B receberam {len(burst)} ids "
                   f"diferentes: o Flask atende cada um numa thread, e duas threads viram a chave como nova "
                   f"ao mesmo tempo. {LOCK_HINT}")
            self._count(ctx, 3, f"{self.concurrent} POSTs ao mesmo tempo com a mesma chave")
            other = self._post(server, "chave-C", body, "Um POST com outra chave (chave-C) e o mesmo corpo")
            expect(other not in (first, raced, *burst), "Uma chave nova (chave-C) recebeu o id de outro pedido: "
                                                        "chaves diferentes são pedidos diferentes.")
            self._count(ctx, 4, "quatro chaves diferentes")
            response = _http(server, "POST", "/pedidos", json=body)
            expect(response.status_code == 400, f"Um POST sem o cabeçalho Idempotency-Key deve ser recusado com "
                                                f"400, e a sua API respondeu {response.status_code}.")
            self._count(ctx, 4, "um POST sem Idempotency-Key")
            self._confirmed(published)
            ids = {first, raced, *burst, other}
            for message in _messages(ctx, self.queue, 10):
                ident = (message.get("properties") or {}).get("message_id")
                expect(ident in ids, f"Uma mensagem da fila tem message_id {ident!r}, que não é o id de nenhuma "
                                     f"resposta: publique com message_id=<o id do pedido>.")
                expect(kit.is_persistent(message), f"A mensagem do pedido {ident} não é persistente: use "
                                                   f"delivery_mode=pika.DeliveryMode.Persistent.")

    def verify(self, ctx):
        kit.expect_durable_queue(ctx, self.queue, "criar_app")
        count = kit.counts_of(ctx, self.queue)[0]
        expect(count == 4, f"A fila '{self.queue}' tem {count} mensagem(ns) depois da verificação, e devia ter 4 "
                           f"(quatro chaves diferentes; repetições e o POST sem chave não publicam).")
        messages = _messages(ctx, self.queue, 10)
        idents = [(m.get("properties") or {}).get("message_id") for m in messages]
        expect(all(idents) and len(set(idents)) == len(idents),
               f"As mensagens da fila '{self.queue}' precisam de message_id únicos (o id de cada pedido).")
        expect(all(kit.is_persistent(m) for m in messages),
               f"Há mensagens não persistentes na fila '{self.queue}'.")
