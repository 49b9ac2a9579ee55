"""Live queue monitor: watch ready / unacked counts and rates while work runs.

    from course_utils.monitor import monitor_queues
    samples = monitor_queues(curso, ["tarefas"], seconds=10, during=start_workers)

The plot updates in place in the notebook every second or so; the function returns every sample
as a DataFrame (one row per queue per sample). Where each column comes from:
- prontas (ready) and consumidores: exact, from an AMQP passive declare at each sample;
- sem_ack (unacked) and the counters behind the rates: only the broker's statistics have them
  (the management API). The broker refreshes them once per statistics interval: 1 s on the
  course's own nodes, 5 s on a default RabbitMQ such as the Docker image, so they move in steps
  and lag behind. The monitor measures that interval (the node's `uptime` in /api/nodes changes
  once per refresh), draws these columns as steps and says the interval in the figure;
- publicadas/entregues/acks por s: computed here from the cumulative counters (message_stats
  publish, deliver_get, ack): the change at each refresh divided by the interval, i.e. the mean
  rate of the last interval, held until the next refresh (0 once a refresh brings no change).
  The broker's own `rate` fields are not used: on short runs they stay 0 or lag a whole sample.
- settle: the statistics of the last moments of the window reach the API up to two intervals
  after them, so by default the monitor goes on sampling for two intervals after `seconds`
  (about 2 s on the course's nodes, 10 s on a default RabbitMQ, 20 s at most) and marks where
  the asked window ended. `settle=False` stops at `seconds`.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from typing import Any, Callable

import pandas as pd
import pika
from matplotlib.figure import Figure

from ._toolkit import display_figure, new_figure, ready_and_consumers
from .errors import CourseError
from .numbers import format_number, number_formatter

COLUMNS = ["t_s", "fila", "prontas", "sem_ack", "consumidores", "publicadas_por_s",
           "entregues_por_s", "acks_por_s"]
RATES = {"publicadas_por_s": "publish", "entregues_por_s": "deliver_get", "acks_por_s": "ack"}
DEFAULT_STATISTICS_INTERVAL = 5.0  # RabbitMQ's collect_statistics_interval, when it cannot be measured
MAX_SETTLE = 20.0  # seconds at most that `settle` adds (a broker tuned to refresh every minute)
_NAN = float("nan")


class _StatisticsClock:
    """Measures how often the broker refreshes its statistics: each node's `uptime` in
    /api/nodes is the value of its last refresh, so the step between two values is the interval.
    Users without the monitoring tag cannot read /api/nodes: then the interval stays unknown."""

    def __init__(self, management):
        self.management = management
        self.enabled = True
        self.last: dict[str, int] = {}
        self.steps: list[float] = []

    def read(self) -> None:
        if not self.enabled:
            return
        try:
            nodes = self.management.get("nodes?columns=name,uptime") or []
        except CourseError:
            self.enabled = False
            return
        for node in nodes:
            name, uptime = node.get("name"), node.get("uptime")
            if uptime is None:
                continue
            if name in self.last and uptime > self.last[name]:
                self.steps.append((uptime - self.last[name]) / 1000)
            self.last[name] = uptime

    @property
    def interval(self) -> float | None:
        # the median: now and then two refreshes come closer together (the course's nodes emit
        # every 0.5 s and sample every 1 s)
        return statistics.median(self.steps) if self.steps else None


def _counter(stats: dict, key: str) -> float:
    return float((stats.get("message_stats") or {}).get(key) or 0)


def _sample(connection, management, names: list[str], t: float) -> list[dict]:
    """One raw sample per queue: exact counts over AMQP, and the statistics as the API has them
    now (NaN where the API does not know the queue yet)."""
    exact = ready_and_consumers(connection, names)
    stats = {q["name"]: q for q in management.queues()}
    rows = []
    for name in names:
        counts, s = exact.get(name), stats.get(name)
        row = {"t_s": round(t, 2), "fila": name,
               "prontas": counts[0] if counts else _NAN, "consumidores": counts[1] if counts else _NAN,
               "sem_ack": _NAN}
        if s is not None:
            unacked = s.get("messages_unacknowledged")
            row["sem_ack"] = _NAN if unacked is None else float(unacked)
        for key in RATES.values():
            # A queue AMQP sees but the statistics do not list yet was created moments ago: its
            # counters start at 0.
            row[key] = _counter(s, key) if s is not None else (0.0 if counts is not None else _NAN)
        rows.append(row)
    return rows


def _changes(values: list[float], times: list[float]) -> list[float]:
    """The times at which a counter took a new value (a refresh that brought a change)."""
    return [t for t, a, b in zip(times[1:], values, values[1:]) if a != b and not math.isnan(a + b)]


def _interval_from_changes(raw: pd.DataFrame) -> float | None:
    """Fallback when /api/nodes is not readable: the typical time between two changes of one
    counter (while work flows, each refresh changes it)."""
    gaps = []
    for _queue, part in raw.groupby("fila", sort=False):
        for key in RATES.values():
            times = _changes(part[key].tolist(), part["t_s"].tolist())
            gaps += [b - a for a, b in zip(times, times[1:])]
    return statistics.median(gaps) if gaps else None


def _rates(values: list[float], times: list[float], period: float | None, margin: float) -> list[float]:
    """Per sample, the mean rate of the last statistics interval of one cumulative counter: at each
    refresh that changes it, the change / the interval; held until the next refresh, and 0 once a
    refresh (one interval later) brings no change. NaN until the monitor has seen a refresh."""
    out, baseline, changed_at, rate = [], None, None, _NAN
    for value, t in zip(values, times):
        if math.isnan(value):
            baseline = changed_at = None
            rate = _NAN
        elif baseline is None:
            baseline, changed_at = value, t
        elif value != baseline:
            rate = max(0.0, (value - baseline) / period) if period else _NAN
            baseline, changed_at = value, t
        elif period and t - changed_at > period + margin:
            rate = 0.0  # a refresh came and brought no change
        out.append(rate)
    return out


def _derive(raw: pd.DataFrame, interval: float | None, sample_every: float) -> pd.DataFrame:
    """The samples' COLUMNS from the raw samples (one row per queue per sample, with the
    cumulative counters): the rates as in the module docstring."""
    out = raw.reindex(columns=["t_s", "fila", "prontas", "sem_ack", "consumidores"]).copy()
    for column in RATES:
        out[column] = _NAN
    if raw.empty:
        return out.reindex(columns=COLUMNS)
    period = interval or _interval_from_changes(raw)
    margin = 1.5 * sample_every + 0.15 * (period or DEFAULT_STATISTICS_INTERVAL)
    for _queue, part in raw.groupby("fila", sort=False):
        times = part["t_s"].tolist()
        for column, key in RATES.items():
            out.loc[part.index, column] = _rates(part[key].tolist(), times, period, margin)
    return out.reindex(columns=COLUMNS)


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


def _settle_time(statistics_interval: float | None, sample_every: float) -> float:
    """How long `settle` samples after the window: two statistics intervals (one for the queues to
    emit their statistics, one for the management agent to sample them), and a sample."""
    return min(MAX_SETTLE, 2 * (statistics_interval or DEFAULT_STATISTICS_INTERVAL) + sample_every)


def _sampler(curso, names: list[str], seconds: float, interval: float, settle: bool, rows: list,
             clock_box: list) -> Callable[[], None]:
    """The sampling loop, for its own thread: its own AMQP connection and HTTP session, and a
    fixed schedule (drawing in the notebook does not delay the samples). With `settle`, it goes
    on for two statistics intervals after `seconds`, so the statistics catch up with the window."""
    def sample_loop() -> None:
        management = curso.broker.management(curso.vhost)
        clock = _StatisticsClock(management)
        clock_box.append(clock)
        connection = pika.BlockingConnection(curso.params())
        try:
            start, tick = time.monotonic(), 0
            while True:
                now = time.monotonic() - start
                extra = _settle_time(clock.interval, interval) if settle else 0.0
                if now > seconds + extra:
                    break
                clock.read()
                rows.extend(_sample(connection, management, names, now))
                tick += 1
                time.sleep(max(0.0, start + tick * interval - time.monotonic()))
        finally:
            connection.close()
    return sample_loop


def _samples(rows: list[dict], clock_box: list, interval: float, seconds: float) -> pd.DataFrame:
    raw = pd.DataFrame(list(rows))
    clock = clock_box[0] if clock_box else None
    measured = clock.interval if clock else None
    samples = _derive(raw, measured, interval)
    period = measured or (_interval_from_changes(raw) if not raw.empty else None)
    samples.attrs.update(janela_s=float(seconds),
                         intervalo_estatisticas_s=round(period, 2) if period else None)
    return samples


def monitor_queues(curso, queues: list[str] | None = None, seconds: float = 10.0, interval: float = 0.5,
                   during: Callable[[], Any] | None = None, show: bool = True,
                   redraw: float = 1.0, settle: bool = True) -> pd.DataFrame:
    """Sample the queues every `interval` s for `seconds` s, drawing a live plot in the notebook.

    - queues: names to watch (default: every queue of the vhost when the monitor starts);
    - during: a function to run in a background thread meanwhile (e.g. start a producer). pika
      connections are not thread-safe: it must open its own connection (curso.connect());
      an exception it raises is raised here at the end;
    - redraw: seconds between two updates of the live plot;
    - settle: go on sampling for two statistics intervals after `seconds`, until the broker's
      statistics (sem_ack, rates) have caught up with the window (see the module docstring).
    Returns the samples (columns t_s, fila, prontas, sem_ack, consumidores, publicadas_por_s,
    entregues_por_s, acks_por_s; attrs janela_s and intervalo_estatisticas_s).
    """
    if interval <= 0 or seconds <= 0:
        raise CourseError("seconds e interval precisam ser positivos.")
    names = list(queues) if queues is not None else [q["name"] for q in curso.management.queues()]
    rows: list[dict] = []
    clock_box: list[_StatisticsClock] = []
    sampler = _Background(_sampler(curso, names, seconds, interval, settle, rows, clock_box),
                          "curso-monitor")
    work = _Background(during, "curso-monitor-work") if during else None
    sampler.start()
    if work:
        work.start()
    handle = None
    limit = seconds + (MAX_SETTLE if settle else 0) + 30
    while sampler.is_alive():
        sampler.join(timeout=redraw if show else limit)
        if show and sampler.is_alive() and rows:
            handle = display_figure(plot_monitor(_samples(rows, clock_box, interval, seconds)), handle)
    samples = _samples(rows, clock_box, interval, seconds)
    if show:
        display_figure(plot_monitor(samples), handle)
    if work:
        work.join(timeout=max(1.0, interval))
    for job in (sampler, work):
        if job is not None and job.error:
            raise job.error
    return samples


def _seconds(value: float) -> str:
    """'5 s', '1 s', '0,5 s' (the course's pt-BR numbers)."""
    return format_number(value, 0 if value >= 1.5 or abs(value - round(value)) < 0.05 else 1) + " s"


def _extended(samples: pd.DataFrame) -> bool:
    window = samples.attrs.get("janela_s")
    return window is not None and not samples.empty and samples["t_s"].max() > window


def _caption(samples: pd.DataFrame) -> str:
    """The pt-BR lines under the title: where each line comes from, and how often it changes."""
    period = samples.attrs.get("intervalo_estatisticas_s")
    every = f"atualizadas a cada {_seconds(period)}" if period else "atualizadas periodicamente"
    lines = ["prontas e consumidores: lidas na hora (AMQP)",
             f"sem ack e taxas: estatísticas do broker, {every}: andam em degraus, com atraso;",
             "cada taxa é a média do último intervalo"]
    if _extended(samples):
        lines[-1] += "; depois da linha pontilhada, o monitor esperou as estatísticas"
    return "\n".join(lines)


def plot_monitor(samples: pd.DataFrame, title: str = "Filas ao longo do tempo") -> Figure:
    """Two panels sharing the time axis: counts (ready solid, unacked dashed steps) and the rates
    (steps). A dotted vertical line marks the end of the asked window when the monitor went on
    sampling for the statistics to catch up. Narrow enough (legends included) for JupyterLab to
    show it at its natural size."""
    fig = new_figure(8.6, 6.4)
    count_ax, rate_ax = fig.subplots(2, 1, sharex=True)
    palette = ["#0072B2", "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
    for i, (queue, part) in enumerate(samples.groupby("fila", sort=False)):
        color = palette[i % len(palette)]
        count_ax.plot(part["t_s"], part["prontas"], color=color, label=f"{queue}: prontas")
        count_ax.plot(part["t_s"], part["sem_ack"], color=color, ls="--", drawstyle="steps-post",
                      label=f"{queue}: sem ack")
        rate_ax.plot(part["t_s"], part["publicadas_por_s"], color=color, drawstyle="steps-post",
                     label=f"{queue}: publicadas/s")
        rate_ax.plot(part["t_s"], part["entregues_por_s"], color=color, ls=":", drawstyle="steps-post",
                     label=f"{queue}: entregues/s")
        rate_ax.plot(part["t_s"], part["acks_por_s"], color=color, ls="-.", drawstyle="steps-post",
                     label=f"{queue}: acks/s")
    if _extended(samples):
        window = samples.attrs["janela_s"]
        for ax in (count_ax, rate_ax):
            ax.axvline(window, color="#777777", ls=":", lw=1,
                       label=f"fim dos {_seconds(window)} pedidos" if ax is count_ax else None)
    count_ax.set_ylabel("mensagens")
    rate_ax.set_ylabel("mensagens/s")
    rate_ax.set_xlabel("segundos")
    for ax in (count_ax, rate_ax):
        ax.grid(color="#EEEEEE")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(number_formatter())
        if not samples.empty:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    rate_ax.xaxis.set_major_formatter(number_formatter())
    fig.suptitle(title, fontsize=11)
    count_ax.set_title(_caption(samples), fontsize=8, color="#444444", loc="left")
    return fig
