"""Sequence diagrams drawn from what services logged (chapters 10 and 13).

    from course_utils.sequence import mensagens, plot_sequence
    rows = mensagens(bg.timeline(), corr="p-1")   # who sent what to whom, from the log lines
    fig = plot_sequence(rows, title="A viagem do pedido p-1")

A service logs `publicou <chave> (corr <id>)` when it publishes and `recebeu <chave> (corr <id>)`
when it takes a message (the shop's services in `course_utils.loja` do). `mensagens` pairs each
"recebeu" with the latest "publicou" of the same key and correlation id before it (else the next
one: two processes' lines can arrive out of order by a millisecond); a receipt with no publication
at all comes from `origem`, the client (a command sent from the notebook). Any table
with the columns `t` (s), `de`, `para`, `rotulo` (and optionally `t_envio`) can be drawn.
"""
from __future__ import annotations

import re

import pandas as pd

LINHA = re.compile(r"^(?P<acao>publicou|recebeu) (?P<chave>\S+)\b.*\(corr (?P<corr>[^)]+)\)\s*$")
COLUNAS = ["t_envio", "t", "de", "para", "rotulo", "corr"]


def mensagens(timeline: pd.DataFrame, corr: str | None = None, origem: str = "cliente") -> pd.DataFrame:
    """The messages in a `bg.timeline()` (columns t, quem, linha): one row per receipt, with
    `t_envio` (when its publisher logged it), `t` (when it was received), `de`, `para`, `rotulo`
    (the routing key) and `corr`; only the correlation id `corr` if given."""
    publicadas: list[tuple[float, str, str, str]] = []
    linhas = []
    for t, quem, linha in timeline[["t", "quem", "linha"]].itertuples(index=False):
        m = LINHA.match(str(linha))
        if not m or (corr is not None and m["corr"] != corr):
            continue
        if m["acao"] == "publicou":
            publicadas.append((t, quem, m["chave"], m["corr"]))
            continue
        antes = [p for p in publicadas if p[2] == m["chave"] and p[3] == m["corr"] and p[0] <= t]
        t_envio, de = (antes[-1][0], antes[-1][1]) if antes else (t, origem)
        if not antes:  # each process's lines reach the timeline through its own reader thread:
            # a receipt can arrive a millisecond before its publication; take the next one then
            depois = _publicacao_seguinte(timeline, m["chave"], m["corr"], t)
            if depois is not None:
                t_envio, de = min(depois[0], t), depois[1]
        linhas.append({"t_envio": t_envio, "t": t, "de": de, "para": quem, "rotulo": m["chave"], "corr": m["corr"]})
    return pd.DataFrame(linhas, columns=COLUNAS)


def _publicacao_seguinte(timeline: pd.DataFrame, chave: str, corr: str, t: float):
    for t2, quem, linha in timeline[["t", "quem", "linha"]].itertuples(index=False):
        m = LINHA.match(str(linha))
        if t2 >= t and m and m["acao"] == "publicou" and m["chave"] == chave and m["corr"] == corr:
            return t2, quem
    return None


def plot_sequence(rows, title: str | None = None, participantes: list[str] | None = None):
    """Draw `rows` (a DataFrame or a list of (t, de, para, rotulo) tuples) as a sequence diagram:
    one lifeline per participant (in order of appearance unless `participantes` is given), time
    going down, one labelled arrow per message. Returns the Figure; `fig.participantes` and
    `fig.setas` (the arrow annotations) say what was drawn."""
    import matplotlib.pyplot as plt

    if not isinstance(rows, pd.DataFrame):
        rows = pd.DataFrame(list(rows), columns=["t", "de", "para", "rotulo"])
    rows = rows.sort_values("t", kind="stable").reset_index(drop=True)
    if "t_envio" not in rows:
        rows = rows.assign(t_envio=rows["t"])
    if participantes is None:
        participantes = []
        for de, para in zip(rows["de"], rows["para"]):
            participantes += [p for p in (de, para) if p not in participantes]
    x = {p: i for i, p in enumerate(participantes)}
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(2.0 * len(participantes), 5), 1.2 + 0.5 * n), layout="constrained")
    topo, fundo = -0.6, n - 0.4
    for p, i in x.items():
        ax.plot([i, i], [topo, fundo], color="#999999", linestyle="--", linewidth=1, zorder=1)
        ax.text(i, topo, p, ha="center", va="bottom", fontsize=10, fontweight="bold",
                bbox=dict(boxstyle="round,pad=0.3", facecolor="#dce9f7", edgecolor="#4a78a8"))
    inicio = rows["t_envio"].min() if len(rows) else 0.0
    setas = []
    for k, r in rows.iterrows():
        x0, x1 = x[r["de"]], x[r["para"]]
        ms = (r["t"] - inicio) * 1000
        seta = ax.annotate("", xy=(x1, k), xytext=(x0, k), zorder=3,
                           arrowprops=dict(arrowstyle="-|>", color="#2b5d8c", linewidth=1.4, shrinkA=2, shrinkB=2))
        setas.append(seta)
        ax.text((x0 + x1) / 2, k - 0.08, r["rotulo"], ha="center", va="bottom", fontsize=9)
        ax.text(len(participantes) - 0.45, k, f"{ms:.0f} ms", ha="left", va="center", fontsize=8, color="#666666")
    ax.set_xlim(-0.7, len(participantes) - 0.1)
    ax.set_ylim(fundo, topo - 0.5)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)
    fig.participantes = list(participantes)
    fig.setas = setas
    return fig


__all__ = ["mensagens", "plot_sequence"]
