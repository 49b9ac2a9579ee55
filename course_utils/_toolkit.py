"""Internals shared by the toolkit modules (topology, routing, trace, throughput, monitor, widgets).

Two concerns only:
- figures: every drawing is a plain `matplotlib.figure.Figure` (no pyplot), so the library never
  picks a backend, never leaks figures into pyplot's state and never shows a figure twice in
  Jupyter; `display_figure` shows one in a notebook and does nothing elsewhere;
- exact queue depths over AMQP (`queue_declare(passive=True)`), which, unlike the management
  API's statistics, do not lag behind the broker.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import pika
import pika.exceptions
from matplotlib.figure import Figure

from .errors import CourseError

# Colours shared by the pictures (colour-blind friendly Okabe-Ito palette).
EXCHANGE_COLORS = {"direct": "#56B4E9", "fanout": "#E69F00", "topic": "#009E73",
                   "headers": "#CC79A7", "x-consistent-hash": "#F0E442"}
QUEUE_COLOR = "#F2F2F2"
CLIENT_COLOR = "#FFFFFF"
PUBLISH_COLOR = "#0072B2"
DELIVER_COLOR = "#009E73"
REDELIVER_COLOR = "#E69F00"
DEAD_COLOR = "#D55E00"


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return None
    return get_ipython()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not in a plain script, pytest or a terminal IPython)."""
    shell = _ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _register_png_formatter() -> None:
    """Let IPython render a bare Figure as PNG even if pyplot was never imported."""
    shell = _ipython()
    if shell is None:
        return
    formatter = shell.display_formatter.formatters.get("image/png")
    if formatter is None:
        return
    try:
        formatter.lookup_by_type(Figure)
    except KeyError:
        from IPython.core.pylabtools import select_figure_formats

        select_figure_formats(shell, {"png"})


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free Figure: returned as a cell's last value, Jupyter shows it once."""
    _register_png_formatter()
    return Figure(figsize=(width, height), layout="constrained")


def display_figure(fig: Figure, handle=None):
    """Show `fig` in a notebook (or update a display handle); no-op outside Jupyter.

    Returns the display handle, so a live plot can update the same output.
    """
    if not in_notebook():
        return handle
    from IPython.display import display

    _register_png_formatter()
    if handle is None:
        return display(fig, display_id=True)
    handle.update(fig)
    return handle


@contextlib.contextmanager
def open_channel(curso) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A short-lived connection and channel to the chapter's vhost, closed on exit."""
    connection = pika.BlockingConnection(curso.params())
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def ready_and_consumers(connection: pika.BlockingConnection, names: Iterable[str]
                        ) -> dict[str, tuple[int, int] | None]:
    """Exact (ready, consumers) of each queue, from passive declares on `connection`.

    A queue that cannot be inspected (deleted, or exclusive to another connection) maps to None;
    the broker closes the channel for those, so a fresh channel is opened for the next queue.
    """
    counts: dict[str, tuple[int, int] | None] = {}
    channel = connection.channel()
    for name in names:
        try:
            ok = channel.queue_declare(queue=name, passive=True).method
            counts[name] = (ok.message_count, ok.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            counts[name] = None
            channel = connection.channel()
    if channel.is_open:
        channel.close()
    return counts


def broker_error(exc: pika.exceptions.ChannelClosedByBroker, what: str) -> CourseError:
    """A pt-BR CourseError for a channel the broker closed while doing `what`."""
    return CourseError(f"O broker recusou {what}: {exc.reply_code} {exc.reply_text}")


def format_headers(headers: dict | None) -> str:
    """'cor=azul, tam=g' (sorted, x-match first) for labels."""
    if not headers:
        return ""
    items = sorted(headers.items(), key=lambda kv: (kv[0] != "x-match", kv[0]))
    return ", ".join(f"{k}={v}" for k, v in items)
