"""Live queue monitor: watch ready / unacked counts and rates while work runs.

    from course_utils.monitor import monitor_queues
    samples = monitor_queues(curso, ["tarefas"], seconds=10, during=start_workers)

The plot updates in place in the notebook every second or so; the function returns every sample
as a DataFrame (one row per queue per sample). Sources:
- prontas (ready) and consumidores: exact, from an AMQP passive declare at each sample;
- sem_ack (unacked) and the rates (publicadas/s, entregues/s, acks/s): the management API's
  statistics, which the broker refreshes every statistics interval (1 s on the course's own
  broker, 5 s on a default RabbitMQ such as the Docker image), so they move in steps there.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pandas as pd
import pika
from matplotlib.figure import Figure

from ._toolkit import display_figure, new_figure, ready_and_consumers
from .errors import CourseError

COLUMNS = ["t_s", "fila", "prontas", "sem_ack", "consumidores", "publicadas_por_s",
           "entregues_por_s", "acks_por_s"]


def _rate(stats: dict, key: str) -> float:
    return float(((stats.get("message_stats") or {}).get(f"{key}_details") or {}).get("rate", 0.0))


def _sample(connection, management, names: list[str], t: float) -> list[dict]:
    exact = ready_and_consumers(connection, names)
    stats = {q["name"]: q for q in management.queues()}
    rows = []
    for name in names:
        s = stats.get(name, {})
        ready, consumers = exact.get(name) or (s.get("messages_ready"), s.get("consumers"))
        rows.append({"t_s": round(t, 2), "fila": name, "prontas": ready,
                     "sem_ack": s.get("messages_unacknowledged"), "consumidores": consumers,
                     "publicadas_por_s": _rate(s, "publish"), "entregues_por_s": _rate(s, "deliver_get"),
                     "acks_por_s": _rate(s, "ack")})
    return rows


class _Background(threading.Thread):
    """Runs a function in a daemon thread; keeps its exception for the caller."""

    def __init__(self, target: Callable[[], Any], name: str):
        super().__init__(name=name, daemon=True)
        self.target, self.error = target, None

    def run(self) -> None:
        try:
            self.target()
        except BaseException as exc:  # re-raised in the caller's thread
            self.error = exc


def _sampler(curso, names: list[str], seconds: float, interval: float, rows: list) -> Callable[[], None]:
    """The sampling loop, for its own thread: its own AMQP connection and HTTP session, and a
    fixed schedule (drawing in the notebook does not delay the samples)."""
    def sample_loop() -> None:
        management = curso.broker.management(curso.vhost)
        connection = pika.BlockingConnection(curso.params())
        try:
            start, tick = time.monotonic(), 0
            while (now := time.monotonic() - start) <= seconds:
                rows.extend(_sample(connection, management, names, now))
                tick += 1
                time.sleep(max(0.0, start + tick * interval - time.monotonic()))
        finally:
            connection.close()
    return sample_loop


def monitor_queues(curso, queues: list[str] | None = None, seconds: float = 10.0, interval: float = 0.5,
                   during: Callable[[], Any] | None = None, show: bool = True,
                   redraw: float = 1.0) -> pd.DataFrame:
    """Sample the queues every `interval` s for `seconds` s, drawing a live plot in the notebook.

    - queues: names to watch (default: every queue of the vhost when the monitor starts);
    - during: a function to run in a background thread meanwhile (e.g. start a producer). pika
      connections are not thread-safe: it must open its own connection (curso.connect());
      an exception it raises is raised here at the end;
    - redraw: seconds between two updates of the live plot.
    Returns the samples (columns t_s, fila, prontas, sem_ack, consumidores, publicadas_por_s,
    entregues_por_s, acks_por_s).
    """
    if interval <= 0 or seconds <= 0:
        raise CourseError("seconds e interval precisam ser positivos.")
    names = list(queues) if queues is not None else [q["name"] for q in curso.management.queues()]
    rows: list[dict] = []
    sampler = _Background(_sampler(curso, names, seconds, interval, rows), "curso-monitor")
    work = _Background(during, "curso-monitor-work") if during else None
    sampler.start()
    if work:
        work.start()
    handle = None
    while sampler.is_alive():
        sampler.join(timeout=redraw if show else seconds + 30)
        if show and sampler.is_alive() and rows:
            handle = display_figure(plot_monitor(pd.DataFrame(list(rows), columns=COLUMNS)), handle)
    samples = pd.DataFrame(rows, columns=COLUMNS)
    if show:
        display_figure(plot_monitor(samples), handle)
    if work:
        work.join(timeout=max(1.0, interval))
    for job in (sampler, work):
        if job is not None and job.error:
            raise job.error
    return samples


def plot_monitor(samples: pd.DataFrame, title: str = "Filas ao longo do tempo") -> Figure:
    """Two panels sharing the time axis: counts (ready solid, unacked dashed) and rates."""
    fig = new_figure(10, 5.5)
    count_ax, rate_ax = fig.subplots(2, 1, sharex=True)
    palette = ["#0072B2", "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
    for i, (queue, part) in enumerate(samples.groupby("fila", sort=False)):
        color = palette[i % len(palette)]
        count_ax.plot(part["t_s"], part["prontas"], color=color, label=f"{queue}: prontas")
        count_ax.plot(part["t_s"], part["sem_ack"], color=color, ls="--", label=f"{queue}: sem ack")
        rate_ax.plot(part["t_s"], part["publicadas_por_s"], color=color, label=f"{queue}: publicadas/s")
        rate_ax.plot(part["t_s"], part["entregues_por_s"], color=color, ls=":", label=f"{queue}: entregues/s")
    count_ax.set_ylabel("mensagens")
    rate_ax.set_ylabel("mensagens/s")
    rate_ax.set_xlabel("segundos")
    for ax in (count_ax, rate_ax):
        ax.grid(color="#EEEEEE")
        ax.set_ylim(bottom=0)
        if not samples.empty:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    count_ax.set_title(title, fontsize=11)
    return fig
