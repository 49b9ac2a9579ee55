"""course_utils.background: real worker processes and threads, watched and always stopped."""
import os
import subprocess
import sys
import textwrap
import time

import pika
import pytest

from course_utils import setup
from course_utils.background import Background
from course_utils.native import pid_alive

WORKER = textwrap.dedent("""
    import os, sys, time
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(os.environ["RABBITMQ_URL"]))
    channel = connection.channel()
    channel.queue_declare(queue="tarefas", durable=True)
    channel.basic_qos(prefetch_count=1)
    print("pronto", flush=True)
    for method, properties, body in channel.consume("tarefas", inactivity_timeout=0.2):
        if method is None:
            continue
        print("recebi", body.decode(), flush=True)
        time.sleep(float(body.decode()))
        channel.basic_ack(delivery_tag=method.delivery_tag)
        print("feito", body.decode(), flush=True)
""")

STUBBORN = textwrap.dedent("""
    import signal, time
    signal.signal(signal.SIGTERM, lambda *a: print("ignorei SIGTERM", flush=True))
    print("teimoso", flush=True)
    while True:
        time.sleep(0.05)
""")


@pytest.fixture
def curso(course_broker):
    chapter = setup("teste-bg")
    yield chapter
    chapter.cleanup(delete_vhost=True)


def _counts(curso, queue):
    with curso.connect() as connection:
        ok = connection.channel().queue_declare(queue=queue, durable=True, passive=True)
        return ok.method.message_count


def test_process_prints_is_killed_mid_task_and_its_message_returns(curso):
    bg = Background(curso)
    try:
        w = bg.process("worker-1", bg.write("worker.py", WORKER))
        assert w.wait_for("pronto", timeout=15), w.output()
        assert w.pid and w.alive
        with curso.connect() as connection:
            connection.channel().basic_publish(exchange="", routing_key="tarefas", body=b"30",
                                               properties=pika.BasicProperties(delivery_mode=2))
        assert w.wait_for("recebi 30", timeout=10), w.output()
        assert _counts(curso, "tarefas") == 0  # delivered, unacked
        w.kill()
        assert not w.alive and w.returncode == -9
        deadline = time.monotonic() + 10
        while _counts(curso, "tarefas") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _counts(curso, "tarefas") == 1  # the broker requeued the unacked message
        assert "feito" not in w.output()
    finally:
        bg.stop_all(quiet=True)


def test_show_prefixes_new_lines_once(curso, capsys):
    bg = Background(curso)
    try:
        bg.write("eco.py", "import sys\nfor a in sys.argv[1:]:\n    print('eco', a)\nprint('sem fim de linha', end='')\n")
        w = bg.process("eco", "eco.py", "um", 2)
        assert w.wait_for("sem fim de linha", timeout=10)
        deadline = time.monotonic() + 5
        while w.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        w.stop()
        capsys.readouterr()
        bg.show()
        assert capsys.readouterr().out.splitlines() == ["[eco] eco um", "[eco] eco 2", "[eco] sem fim de linha"]
        bg.show()
        assert capsys.readouterr().out == ""
        assert w.output() == "eco um\neco 2\nsem fim de linha\n"
    finally:
        bg.stop_all(quiet=True)


def test_environment_and_scratch_folder(curso):
    bg = Background(curso)
    try:
        bg.write("env.py", "import os\nprint(os.environ['RABBITMQ_URL'])\nprint(os.getcwd())\n")
        w = bg.process("env", "env.py")
        assert w.wait_for(str(bg.folder), timeout=10)
        assert w.lines()[0] == curso.url
        started = time.monotonic()
        assert not w.wait_for("nunca", timeout=5)  # it has ended: False at once, not after 5 s
        assert time.monotonic() - started < 2
        assert w.stop() is True and w.returncode == 0
    finally:
        bg.stop_all(quiet=True)


def test_scratch_folders_of_dead_processes_are_removed(curso):
    from course_utils.background import SCRATCH

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = SCRATCH / f"{int(dead.stdout)}-velha"
    stale.mkdir(parents=True, exist_ok=True)
    bg = Background(curso)
    assert bg.folder.parent == SCRATCH and bg.folder.name.startswith(f"{os.getpid()}-")
    assert not stale.exists()
    bg.stop_all(quiet=True)


def test_stop_of_a_process_that_ignores_sigterm(curso):
    bg = Background(curso)
    try:
        w = bg.process("teimoso", bg.write("teimoso.py", STUBBORN))
        assert w.wait_for("teimoso", timeout=10)
        started = time.monotonic()
        report = bg.stop_all(timeout=0.5, quiet=True)
        assert time.monotonic() - started < 5
        assert not w.alive and w.returncode == -9
        assert "ignorei SIGTERM" in w.output()
        assert report and "SIGKILL" in report[0] and "teimoso" in report[0]
        assert w.stop() is True  # already stopped: nothing to do
    finally:
        bg.stop_all(quiet=True)


def test_threads(curso):
    bg = Background(curso)

    def consumidor(fila, stop_event):
        connection = pika.BlockingConnection(pika.URLParameters(curso.url))
        channel = connection.channel()
        channel.queue_declare(queue=fila, durable=True)
        print("ouvindo", fila)
        while not stop_event.is_set():
            method, _, body = channel.basic_get(fila)
            if method is not None:
                print("chegou", body.decode())
                channel.basic_ack(delivery_tag=method.delivery_tag)
            connection.process_data_events(time_limit=0.05)
        connection.close()
        print("fechei")

    def quebra():
        raise ValueError("entrada ruim")

    def surdo():
        time.sleep(1)

    try:
        t = bg.thread("t1", consumidor, "fila_t")
        assert t.pid is None
        assert t.wait_for("ouvindo", timeout=10)
        with curso.connect() as connection:
            connection.channel().basic_publish(exchange="", routing_key="fila_t", body=b"oi")
        assert t.wait_for("chegou oi", timeout=10)
        assert t.stop(timeout=5) and not t.alive
        assert "fechei" in t.output()

        q = bg.thread("q", quebra)
        assert q.wait_for("ValueError: entrada ruim", timeout=5)
        assert isinstance(q.error, ValueError)
        with pytest.raises(Exception, match="processo"):
            q.kill()

        s = bg.thread("surdo", surdo)
        report = bg.stop_all(timeout=0.2, quiet=True)
        assert any("surdo" in line and "thread" in line for line in report)
        s.stop(timeout=5)
        assert not s.alive
    finally:
        bg.stop_all(quiet=True)


def test_no_process_left_after_stop_all_and_curso_cleanup(course_broker):
    curso = setup("teste-bg2")
    bg = Background(curso)
    loop = bg.write("loop.py", "import time\nprint('vivo', flush=True)\ntime.sleep(60)\n")
    workers = [bg.process(f"w{i}", loop) for i in range(3)]
    assert all(w.wait_for("vivo", timeout=10) for w in workers)
    pids = [w.pid for w in workers]
    assert bg.stop_all() == []
    assert not any(pid_alive(p) for p in pids)
    again = bg.process("w0", loop)
    assert again.wait_for("vivo", timeout=10)
    curso.cleanup(delete_vhost=True)  # the sandbox's clean-up stops them too
    assert not again.alive and not pid_alive(again.pid)


def test_rerunning_a_cell_replaces_the_worker(curso, capsys):
    bg = Background(curso)
    try:
        loop = bg.write("loop.py", "import time\nprint('vivo', flush=True)\ntime.sleep(60)\n")
        first = bg.process("w", loop)
        assert first.wait_for("vivo", timeout=10)
        second = bg.process("w", loop)
        assert not first.alive and second.wait_for("vivo", timeout=10)
        assert "já estava rodando" in capsys.readouterr().out
        assert list(bg.status()["nome"]) == ["w"]
    finally:
        bg.stop_all(quiet=True)


def test_a_process_started_from_a_short_lived_thread_outlives_it(curso):
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: children are forked by a spawner thread
    import threading

    bg = Background(curso)
    try:
        loop = bg.write("loop.py", "import time\nprint('vivo', flush=True)\ntime.sleep(60)\n")
        starter = threading.Thread(target=lambda: bg.process("w", loop))
        starter.start()
        starter.join(10)
        w = bg["w"]
        assert w.wait_for("vivo", timeout=10)
        time.sleep(0.3)
        assert w.alive
    finally:
        bg.stop_all(quiet=True)


PARENT = textwrap.dedent("""
    import sys, time
    from course_utils.background import Background
    bg = Background(url="amqp://guest:guest@localhost:5672/")
    bg.write("filho.py", "import time\\nprint('filho', flush=True)\\ntime.sleep(60)\\n")
    w = bg.process("filho", "filho.py")
    w.wait_for("filho", timeout=10)
    print(w.pid, flush=True)
    time.sleep(60)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_process_dies_when_its_parent_dies(tmp_path):
    script = tmp_path / "pai.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert pid_alive(child)
        parent.kill()  # as a kernel that dies: no clean-up runs
        parent.wait(5)
        deadline = time.monotonic() + 5
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child)
    finally:
        parent.kill()
        parent.wait(5)


# --- chapter 9: an HTTP server in the kernel, a Celery worker process --------------------------

TASKS = textwrap.dedent("""
    import os
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("tarefas_bg", broker=os.environ["CELERY_BROKER_URL"], backend="rpc://")
    app.conf.task_queues = [Queue("tarefas", Exchange("tarefas", type="topic"), routing_key="tarefas",
                                  queue_arguments={"x-queue-type": "quorum"})]
    app.conf.task_default_queue = "tarefas"
    app.conf.task_default_exchange = "tarefas"
    app.conf.task_default_exchange_type = "topic"
    app.conf.task_default_routing_key = "tarefas"
    app.conf.broker_connection_retry_on_startup = True

    @app.task
    def dobro(n):
        return 2 * n
""")


def test_a_server_answers_logs_apart_and_frees_its_port(curso):
    import requests
    from flask import Flask

    app = Flask("teste")
    app.add_url_rule("/ping", "ping", lambda: ({"pong": True}, 200))
    bg = Background(curso)
    server = bg.serve("api", app)
    assert requests.get(server.url + "/ping", timeout=5).json() == {"pong": True}
    assert server.wait_for("GET /ping", timeout=5)
    assert "\x1b[" not in server.output(), "the request log keeps werkzeug's colour codes"
    taken = server.port
    from course_utils.errors import CourseError
    with pytest.raises(CourseError, match="ocupada"):
        bg.serve("outra", app, port=taken)
    bg.stop_all()
    assert not server.alive
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{taken}/ping", timeout=2)


def test_a_celery_worker_runs_the_module_the_kernel_imports(curso):
    bg = Background(curso)
    bg.write("tarefas_bg.py", TASKS)
    os.environ["CELERY_BROKER_URL"] = curso.url  # the module reads it at import, as in the worker
    try:
        tarefas = bg.import_module("tarefas_bg")
        worker = bg.celery("worker", "tarefas_bg")
        assert tarefas.dobro.delay(21).get(timeout=20) == 42
        assert "SuperUser" not in worker.output() and "superuser" not in worker.output()
        queue = curso.management.queue("tarefas")
        assert queue["type"] == "quorum" and queue["durable"]
        pid = worker.pid
        curso.cleanup()
        assert not pid_alive(pid)
    finally:
        os.environ.pop("CELERY_BROKER_URL", None)


def test_a_celery_worker_that_cannot_start_is_killed_and_explained(curso):
    from course_utils.errors import CourseError

    bg = Background(curso)
    bg.write("quebrado.py", "raise ImportError('de propósito')\n")
    with pytest.raises(CourseError, match="de propósito"):
        bg.celery("worker", "quebrado", ready_timeout=20)
    assert bg.alive() == []


SERVICE = textwrap.dedent("""
    import os, signal, sys, time
    print("inicio", os.getpid(), flush=True)
    signal.signal(signal.SIGTERM, lambda *a: (print("fim", flush=True), sys.exit(0)))
    while True:
        time.sleep(0.05)
""")


def test_a_killed_service_restarts_and_its_lines_stay_in_the_timeline(curso):
    bg = Background(curso)
    bg.write("servico.py", SERVICE)
    first = bg.process("estoque", "servico.py")
    other = bg.process("pagamentos", "servico.py")
    assert first.wait_for("inicio") and other.wait_for("inicio")
    first.kill()
    again = bg.restart("estoque")
    assert again.wait_for("inicio") and again.pid != first.pid and again.alive
    timeline = bg.timeline()
    assert list(timeline.columns) == ["t", "quem", "linha"]
    assert timeline["t"].is_monotonic_increasing and timeline["t"].iloc[0] == 0
    starts = timeline[timeline["linha"].str.startswith("inicio")]
    assert list(starts["quem"]).count("estoque") == 2, "the first run's lines were lost on restart"
    assert set(bg.timeline(names=["pagamentos"])["quem"]) == {"pagamentos"}
    stopped = bg.restart("pagamentos")  # a running one: SIGTERM first, then started again
    assert stopped.wait_for("inicio")
    assert "fim" in list(bg.timeline(names=["pagamentos"])["linha"])
    from course_utils.errors import CourseError
    with pytest.raises(CourseError):
        bg.restart("nenhum")
    bg.stop_all()
    assert bg.alive() == []
