"""Live queue monitor: samples as data, exact ready counts, the background work's errors surface."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.monitor import COLUMNS, monitor_queues, plot_monitor  # noqa: E402


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
    samples = monitor_queues(curso, seconds=0.3, interval=0.1, show=False)
    assert set(samples["fila"]) == {"tarefas", "outra"}
    missing = monitor_queues(curso, ["nao_existe"], seconds=0.2, interval=0.1, show=False)
    assert missing["prontas"].isna().all()


def test_work_errors_are_raised(curso):
    def broken():
        raise ValueError("falhou")

    with pytest.raises(ValueError, match="falhou"):
        monitor_queues(curso, ["tarefas"], seconds=0.3, interval=0.1, during=broken)
