"""Throughput lab: sane figures, every confirm mode, consumers, and no queue left behind.

Speed itself is not asserted here (that is benchmarks/throughput.py's job)."""
import math
import re
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.backends.backend_agg import RendererAgg  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.errors import CourseError  # noqa: E402
from course_utils.throughput import compare, measure_consume, measure_publish, plot_throughput  # noqa: E402
from figure_geometry import assert_readable  # noqa: E402


def format_number(value, decimals):
    """pt-BR, written out here so the test does not trust the code under test: 5891.1 -> '5.891,1'."""
    return f"{value:,.{decimals}f}".replace(",", "_").replace(".", ",").replace("_", ".")


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


# what a learner reads: pt-BR numbers everywhere, a table that fits the notebook -------------------
PT_BR_NUMBER = re.compile(r"^-?\d{1,3}(\.\d{3})*(,\d+)?$")
JUPYTERLAB_CELL_PX = 848  # a cell's output in a 1280-px JupyterLab window; wider tables are cut off
DEMO_GRID = ([{"confirm": c, "persistent": p, "count": 300} for c in ("none", "message", "batch") for p in (False, True)]
             + [{"operation": "consume", "prefetch": n, "count": 300} for n in (1, 10, 100)])


class _Cells(HTMLParser):
    """The rows of the first HTML table: [(text, is_header_cell), ...] per row."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = [tag == "th", ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._cell[1].strip(), self._cell[0]))
            self._cell = None


def table_width_px(html: str) -> float:
    """Width JupyterLab gives an HTML table: its CSS sets 13 px text (headers bold) and 0.5 em
    padding on each side of every cell; DejaVu Sans is as wide as the fonts a browser uses."""
    parser = _Cells()
    parser.feed(html)
    widths: dict[int, float] = {}
    for row in parser.rows:
        for i, (text, bold) in enumerate(row):
            prop = FontProperties(family="DejaVu Sans", size=13 * 72 / 100, weight="bold" if bold else "normal")
            w, _, _ = _RENDERER.get_text_width_height_descent(text, prop, ismath=False)
            widths[i] = max(widths.get(i, 0.0), w + 13)
    return sum(widths.values())


_RENDERER = RendererAgg(10, 10, 100)


def test_compare_table_fits_a_jupyterlab_cell_with_pt_br_numbers(curso):
    df = compare(curso, DEMO_GRID)  # the grid of docs/toolkit_demo.ipynb, fewer messages
    assert len(df) == 9 and (df["msg/s"] > 0).all()  # the data keep their columns and numbers
    html = df._repr_html_()
    assert table_width_px(html) <= JUPYTERLAB_CELL_PX, f"{table_width_px(html):.0f} px"
    parser = _Cells()
    parser.feed(html)
    header = [text for text, _ in parser.rows[0]]
    column = header.index("msg/s")
    shown = [row[column][0] for row in parser.rows[1:]]
    assert shown == [format_number(v, 1) for v in df["msg/s"]]
    assert all(PT_BR_NUMBER.match(text) for text in shown), shown
    # chapter 5 shows a few columns of it: the same numbers
    part = df[["prefetch", "mensagens", "segundos", "msg/s", "p50_ms", "p95_ms"]]
    assert format_number(df["msg/s"].iloc[-1], 1) in part._repr_html_()


def test_throughput_figure_is_pt_br_and_readable(curso, tmp_path):
    df = compare(curso, DEMO_GRID)
    fig = plot_throughput(df)
    fig.savefig(tmp_path / "vazao.png", dpi=fig.dpi, bbox_inches="tight")
    texts = [t.text.strip() for t in assert_readable(fig)]
    for v in df["msg/s"]:  # bar labels: the table's number, pt-BR
        assert format_number(v, 1) in texts, (format_number(v, 1), texts)
    numbers = [t for t in texts if re.fullmatch(r"[-\d.,]+", t)]
    assert numbers and all(PT_BR_NUMBER.match(t) for t in numbers), numbers  # axes too


def test_number_format():
    from course_utils.numbers import format_number as fmt

    assert [fmt(5891.1), fmt(1024), fmt(0.1234), fmt(2.0), fmt(-1500.5)] == ["5.891,1", "1.024", "0,123", "2", "-1.500,5"]
    assert [fmt(5891.06, 1), fmt(float("nan")), fmt(None), fmt(True), fmt(False)] == ["5.891,1", "—", "—", "sim", "não"]
