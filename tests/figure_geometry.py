"""Geometry of a figure as JupyterLab shows it: every drawn text's box in pixels, the picture's
width, and the smallest text at the displayed size. Used by the picture tests (topology, trace,
throughput, routing).

JupyterLab shows an image output at its natural size up to the cell's width and shrinks anything
wider. A cell's output is 848 px wide in a 1280-px browser window (tests/test_browser.py's
viewport), about 900-1000 px on a larger laptop screen: DISPLAY_WIDTH_PX = 848 is the narrow
case. The PNG is made as IPython makes it (`print_figure`: the figure's dpi, bbox_inches="tight").
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

DISPLAY_WIDTH_PX = 848
MIN_TEXT_PX = 10.0


@dataclass
class DrawnText:
    text: str
    box: Bbox          # pixels; the text's background box when it has one
    font_px: float     # at the figure's dpi (natural size)


def png_size(fig: Figure) -> tuple[int, int]:
    """(width, height) in pixels of the PNG Jupyter shows for `fig`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    return Image.open(io.BytesIO(buffer.getvalue())).size


@contextlib.contextmanager
def _recording():
    drawn: list[tuple[Text, object]] = []
    original = Text.draw

    def draw(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, renderer))

    Text.draw = draw
    try:
        yield drawn
    finally:
        Text.draw = original


def drawn_texts(fig: Figure) -> list[DrawnText]:
    """Every text the figure actually draws (titles, labels, ticks, legends, annotations)."""
    canvas = FigureCanvasAgg(fig)
    with _recording() as drawn:
        canvas.draw()
    result = []
    for text, renderer in drawn:
        patch = text.get_bbox_patch()
        box = patch.get_window_extent(renderer) if patch is not None else text.get_window_extent(renderer)
        result.append(DrawnText(text.get_text(), box, text.get_fontsize() * fig.dpi / 72))
    return result


def display_scale(fig: Figure) -> float:
    """How much JupyterLab shrinks the picture (1.0: shown at its natural size)."""
    width, _ = png_size(fig)
    return min(1.0, DISPLAY_WIDTH_PX / width)


def overlapping(texts: list[DrawnText], tolerance: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap by more than `tolerance` pixels both ways."""
    pairs = []
    for i, a in enumerate(texts):
        for b in texts[i + 1:]:
            width = min(a.box.x1, b.box.x1) - max(a.box.x0, b.box.x0)
            height = min(a.box.y1, b.box.y1) - max(a.box.y0, b.box.y0)
            if width > tolerance and height > tolerance:
                pairs.append((a.text, b.text))
    return pairs


def assert_readable(fig: Figure, min_px: float = MIN_TEXT_PX) -> list[DrawnText]:
    """No two texts overlap, and the smallest is at least `min_px` pixels tall on screen."""
    texts = drawn_texts(fig)
    assert texts, "a figura não desenhou nenhum texto"
    clashes = overlapping(texts)
    assert not clashes, f"textos sobrepostos: {clashes}"
    scale = display_scale(fig)
    smallest = min(texts, key=lambda t: t.font_px)
    assert smallest.font_px * scale >= min_px, (
        f"texto {smallest.text!r} fica com {smallest.font_px * scale:.1f} px na tela "
        f"({smallest.font_px:.1f} px × escala {scale:.2f}; figura de {png_size(fig)[0]} px)")
    return texts
