"""Throughput lab: sane figures, every confirm mode, consumers, and no queue left behind.

Speed itself is not asserted here (that is benchmarks/throughput.py's job)."""
import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.errors import CourseError  # noqa: E402
from course_utils.throughput import compare, measure_consume, measure_publish, plot_throughput  # noqa: E402


@pytest.fixture
def curso(course_broker):
    curso = setup("teste-vazao")
    yield curso
    assert curso.management.queues() == [], "o laboratório deixou filas para trás"
    curso.cleanup(delete_vhost=True)


@pytest.mark.parametrize("confirm", ["none", "message", "batch", "async"])
def test_publish_every_confirm_mode(curso, confirm):
    m = measure_publish(curso, count=1500, size=256, confirm=confirm, batch_size=100)
    assert m.messages == 1500 and m.queued == 1500 and m.nacked == 0
    assert m.seconds > 0 and m.rate > 0
    if confirm == "none":
        assert m.latencies_ms == [] and math.isnan(m.row()["p50_ms"])
    else:
        assert len(m.latencies_ms) == 1500
        assert 0 < m.row()["p50_ms"] <= m.row()["p95_ms"] <= m.row()["p99_ms"]


def test_publish_for_a_duration_persistent_quorum(curso):
    m = measure_publish(curso, count=None, duration=0.3, persistent=True, confirm="batch",
                        queue_type="quorum")
    assert m.messages > 0 and m.messages % 100 == 0 and m.queued == m.messages
    assert m.row()["fila"] == "quorum" and m.row()["persistente"] is True


@pytest.mark.parametrize("prefetch,consumers", [(1, 1), (50, 2)])
def test_consume(curso, prefetch, consumers):
    m = measure_consume(curso, count=1000, size=128, prefetch=prefetch, consumers=consumers)
    assert m.messages == 1000 and m.rate > 0
    assert 1000 - consumers <= len(m.latencies_ms) <= 999  # one gap per delivery after a consumer's first
    row = m.row()
    assert (row["operação"], row["prefetch"], row["consumidores"]) == ("consumir", prefetch, consumers)


def test_compare_grid_and_plot(curso, tmp_path):
    df = compare(curso, {"confirm": ["none", "batch"], "persistent": [False, True], "count": [500]})
    assert len(df) == 4
    assert df["confirmação"].tolist() == ["nenhuma", "nenhuma", "lote de 100", "lote de 100"]
    assert (df["msg/s"] > 0).all() and (df["mensagens"] == 500).all()
    mixed = compare(curso, [{"confirm": "message", "count": 200},
                            {"operation": "consume", "count": 300, "prefetch": 10}])
    assert mixed["operação"].tolist() == ["publicar", "consumir"]
    path = tmp_path / "vazao.png"
    plot_throughput(df).savefig(path)
    plot_throughput(mixed).savefig(tmp_path / "misto.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bad_settings(curso):
    with pytest.raises(CourseError, match="confirm"):
        measure_publish(curso, count=10, confirm="talvez")
    with pytest.raises(CourseError):
        measure_publish(curso, count=None, duration=None)
