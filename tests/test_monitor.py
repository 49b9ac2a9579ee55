"""Live queue monitor: samples as data, exact ready counts, the background work's errors surface;
on a broker with RabbitMQ's default 5 s statistics the unacked count and the rates still show."""
import threading

import matplotlib

matplotlib.use("Agg")

import matplotlib.text  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.broker import Broker  # noqa: E402
from course_utils.monitor import COLUMNS, monitor_queues, plot_monitor  # noqa: E402
from course_utils.sandbox import Chapter  # noqa: E402
from figure_geometry import assert_readable  # noqa: E402


@pytest.fixture
def curso(course_broker):
    curso = setup("teste-monitor")
    with curso.connect() as connection:
        connection.channel().queue_declare(queue="tarefas", durable=True)
        connection.channel().queue_declare(queue="outra", durable=True)
    yield curso
    curso.cleanup(delete_vhost=True)


def test_samples_follow_background_work(curso, tmp_path):
    def producer():
        with curso.connect() as connection:
            channel = connection.channel()
            for i in range(40):
                channel.basic_publish(exchange="", routing_key="tarefas", body=f"t{i}".encode())

    samples = monitor_queues(curso, ["tarefas", "outra"], seconds=1.2, interval=0.2, during=producer)
    assert list(samples.columns) == COLUMNS
    assert set(samples["fila"]) == {"tarefas", "outra"}
    assert samples["t_s"].is_monotonic_increasing
    last = samples.groupby("fila").last()
    assert last.loc["tarefas", "prontas"] == 40 and last.loc["outra", "prontas"] == 0
    assert samples["prontas"].max() == 40
    path = tmp_path / "monitor.png"
    plot_monitor(samples).savefig(path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_all_queues_by_default_and_missing_queue(curso):
    samples = monitor_queues(curso, seconds=0.3, interval=0.1, show=False, settle=False)
    assert set(samples["fila"]) == {"tarefas", "outra"}
    missing = monitor_queues(curso, ["nao_existe"], seconds=0.2, interval=0.1, show=False, settle=False)
    assert missing["prontas"].isna().all()


def test_work_errors_are_raised(curso):
    def broken():
        raise ValueError("falhou")

    with pytest.raises(ValueError, match="falhou"):
        monitor_queues(curso, ["tarefas"], seconds=0.3, interval=0.1, during=broken)


@pytest.mark.slow
def test_statistics_show_on_a_broker_that_refreshes_every_5_s(default_stats_node):
    node = default_stats_node
    check = node.ctl("eval", "application:get_env(rabbit, collect_statistics_interval).")
    assert check.stdout.strip() == "{ok,5000}", check.stdout + check.stderr
    broker = Broker("external", "127.0.0.1", node.ports.amqp, "guest", "guest",
                    f"http://127.0.0.1:{node.ports.management}")
    curso = Chapter("monitor5s", broker, "/", owns_vhost=False)
    with curso.connect() as connection:
        connection.channel().queue_declare(queue="tarefas", durable=True)
    release, held = threading.Event(), threading.Event()

    def work():  # 60 published, then 5 taken and held without ack until the test lets go
        with curso.connect() as connection:
            channel = connection.channel()
            for i in range(60):
                channel.basic_publish(exchange="", routing_key="tarefas", body=f"t{i}".encode())
            channel.basic_qos(prefetch_count=5)
            taken = 0
            for method, _properties, _body in channel.consume("tarefas", inactivity_timeout=1):
                taken += method is not None
                if taken == 5 or method is None:
                    break
            held.set()
            release.wait(60)

    try:
        samples = monitor_queues(curso, ["tarefas"], seconds=2, interval=0.25, during=work, show=False)
    finally:
        release.set()
    assert held.is_set()
    assert samples["prontas"].iloc[-1] == 55  # exact, from AMQP
    # what only the statistics show: the 5 unacked and the rates, within the call
    assert (samples["sem_ack"] == 5).any(), samples.to_string()
    assert samples["publicadas_por_s"].max() > 0 and samples["entregues_por_s"].max() > 0, samples.to_string()
    assert 4.0 <= samples.attrs["intervalo_estatisticas_s"] <= 6.0
    caption = " ".join(t.get_text() for t in plot_monitor(samples).findobj(matplotlib.text.Text))
    assert "a cada 5 s" in caption


def _synthetic_samples():
    """Chapter 5's two queues on a broker with 5 s statistics, after the monitor waited for them."""
    rows = []
    for i in range(61):
        t = i * 0.25
        for fila, ready in (("pedidos_manual", 10 if t < 1 else 7), ("pedidos_auto", 10 if t < 1 else 0)):
            rows.append({"t_s": t, "fila": fila, "prontas": ready, "sem_ack": 0.0 if t < 6 else 3.0,
                         "consumidores": 1, "publicadas_por_s": 2.0 if 1 < t < 7 else 0.0,
                         "entregues_por_s": 0.6 if t > 6 else float("nan"), "acks_por_s": 0.4})
    samples = pd.DataFrame(rows, columns=COLUMNS)
    samples.attrs.update(janela_s=5.0, intervalo_estatisticas_s=5.04)
    return samples


def test_monitor_picture_geometry():
    fig = plot_monitor(_synthetic_samples())
    texts = assert_readable(fig)  # no two texts overlap; none under 10 px as JupyterLab shows it
    joined = " ".join(t.text for t in texts)
    assert "a cada 5 s" in joined and "lidas na hora (AMQP)" in joined
    assert "fim dos 5 s pedidos" in joined
