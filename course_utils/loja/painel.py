"""The shop's live panel (chapter 13): every order's state, read from the event bus.

    from course_utils.loja.painel import Painel
    painel = Painel(curso)       # its own connection, in a daemon thread
    painel.widget                # the live view (an ipywidgets.HTML), refreshed at most every 0.5 s
    painel.esperar(1000, timeout=60)   # True once 1000 orders reached a final state
    painel.estados(), painel.eventos(), painel.latencias(), painel.vazao(), painel.plot_latencias()
    painel.limpar()              # forget what was seen (between two runs)
    painel.close()               # also done by curso.cleanup()

It declares an EXCLUSIVE, server-named queue bound with `#` to `loja.eventos`: it sees a copy of
every event and takes nothing from the services' queues; the queue disappears with its
connection. It consumes with manual acks in a bounded loop (`process_data_events(time_limit=...)`,
checking a stop flag), and stamps each event with the time it arrived (`time.time()`, one clock
for every event, so the gaps between two events of an order are the time the stage between them
took, queueing included).

An order's state is that of its most advanced event, whatever the order they arrive in:
criado → reservado → pago / pagamento recusado → em preparo → enviado, with the final states
`enviado`, `cancelado` (no stock: `estoque.indisponivel`) and `estornado` (payment refused and
the reservation released: `estoque.liberado`).
"""
from __future__ import annotations

import html
import json
import threading
import time
import weakref

import pika

from .._toolkit import new_figure
from ..errors import CourseError
from ..sandbox import close_quietly
from .contratos import CHAVES, EXCHANGE

# routing key -> (state, rank): an order is in the state of the highest-ranked event it had
ESTADOS = {
    "pedido.criado": ("criado", 0),
    "estoque.reservado": ("reservado", 1),
    "pagamento.aprovado": ("pago", 2),
    "pagamento.rejeitado": ("pagamento recusado", 2),
    "logistica.em_preparo": ("em preparo", 3),
    "logistica.enviado": ("enviado", 9),
    "estoque.indisponivel": ("cancelado", 9),
    "estoque.liberado": ("estornado", 9),
}
FINAIS = ("enviado", "cancelado", "estornado")
ORDEM = ["criado", "reservado", "pago", "pagamento recusado", "em preparo", "enviado", "cancelado", "estornado"]
MOTIVOS = {"cancelado": "sem estoque", "estornado": "pagamento recusado"}
CORES = {"criado": "#9e9e9e", "reservado": "#4a78a8", "pago": "#2b8c5d", "pagamento recusado": "#d55e00",
         "em preparo": "#e69f00", "enviado": "#1b7837", "cancelado": "#762a83", "estornado": "#b2182b"}
# (label, from keys, to keys): the first arrival of any `to` key minus the first of any `from` key
ETAPAS = [
    ("pedido.criado → estoque.*", ("pedido.criado",), ("estoque.reservado", "estoque.indisponivel")),
    ("estoque.reservado → pagamento.*", ("estoque.reservado",), ("pagamento.aprovado", "pagamento.rejeitado")),
    ("pagamento.aprovado → logistica.enviado", ("pagamento.aprovado",), ("logistica.enviado",)),
    ("pagamento.rejeitado → estoque.liberado", ("pagamento.rejeitado",), ("estoque.liberado",)),
    ("total: pedido.criado → estado final", ("pedido.criado",),
     ("logistica.enviado", "estoque.indisponivel", "estoque.liberado")),
]
LINHAS = 12  # orders shown in the widget (the latest updated)
REDESENHO = 0.5  # s between two refreshes of the widget, at most one per this while events arrive
PREFETCH = 200

_abertos: "weakref.WeakValueDictionary[str, Painel]" = weakref.WeakValueDictionary()


class _Valor:
    """What `widget` is without ipywidgets: an object with `value` that a notebook shows as HTML."""

    def __init__(self, value: str = "") -> None:
        self.value = value

    def _repr_html_(self) -> str:
        return self.value


def _novo_widget():
    try:
        import ipywidgets
    except ImportError:
        return _Valor()
    return ipywidgets.HTML()


class Painel:
    """The live view of every order's state (see the module's docstring)."""

    def __init__(self, curso, nome: str = "painel", timeout: float = 10.0) -> None:
        self.nome = nome
        self.fila: str | None = None  # the exclusive queue's server-given name
        self.erro: BaseException | None = None  # why the thread ended early, if it did
        self.widget = _novo_widget()
        self._params = curso.params(client_properties={"connection_name": nome})
        self._cond = threading.Condition()
        self._desenho = threading.Lock()
        self._parar = threading.Event()
        self._pronto = threading.Event()
        self._fechado = False
        self._zerar()
        self._desenhar()
        anterior = _abertos.get(curso.url)
        if anterior is not None:  # the same cell run again: one panel per sandbox
            anterior.close()
        self._thread = threading.Thread(target=self._rodar, name=f"curso-{nome}", daemon=True)
        self._thread.start()
        if not self._pronto.wait(timeout) or self.erro is not None:
            self.close()
            raise CourseError(f"O painel não conseguiu ligar a fila dele a {EXCHANGE}: {self.erro!r}")
        _abertos[curso.url] = self
        ref = weakref.ref(self)
        curso.on_cleanup(lambda: ref() is not None and ref().close())

    # the consumer's thread -------------------------------------------------------------------
    def _rodar(self) -> None:
        connection = None
        try:
            connection = pika.BlockingConnection(self._params)
            channel = connection.channel()
            channel.exchange_declare(exchange=EXCHANGE, exchange_type="topic", durable=True)
            self.fila = channel.queue_declare(queue="", exclusive=True).method.queue
            channel.queue_bind(queue=self.fila, exchange=EXCHANGE, routing_key="#")
            channel.basic_qos(prefetch_count=PREFETCH)
            tag = channel.basic_consume(queue=self.fila, on_message_callback=self._callback)
            self._pronto.set()
            while not self._parar.is_set():
                connection.process_data_events(time_limit=0.1)
                if self._sujo and time.monotonic() - self._desenhado >= REDESENHO:
                    self._desenhar()
            channel.basic_cancel(tag)
        except Exception as exc:  # noqa: BLE001 - the broker went away, the vhost was deleted...
            self.erro = exc
        finally:
            close_quietly(connection)
            self._pronto.set()
            with self._cond:
                self._cond.notify_all()
            self._desenhar()

    def _callback(self, ch, method, properties, body) -> None:
        agora = time.time()
        try:
            pedido_id = json.loads(body).get("pedido_id")
        except (ValueError, AttributeError):
            pedido_id = None
        pedido_id = str(pedido_id or properties.correlation_id or "?")
        chave = method.routing_key
        with self._cond:
            self._t0 = self._t0 or agora
            repetida = properties.message_id in self._ids
            self._ids.add(properties.message_id)
            self._repetidas += repetida
            self._eventos.append((agora, chave, properties.type, pedido_id, properties.message_id,
                                  bool(method.redelivered), repetida))
            pedido = self._pedidos.setdefault(pedido_id, {"estado": None, "nivel": -1, "chegadas": {}})
            pedido["chegadas"].setdefault(chave, agora)
            pedido["ultimo"] = agora
            estado, nivel = ESTADOS.get(chave, (None, -1))
            if nivel > pedido["nivel"]:
                era_final = pedido["estado"] in FINAIS
                pedido["estado"], pedido["nivel"] = estado, nivel
                if estado in FINAIS and not era_final:
                    self._finais += 1
                    self._cond.notify_all()
            self._sujo = True
        ch.basic_ack(delivery_tag=method.delivery_tag)

    # the widget --------------------------------------------------------------------------------
    def _zerar(self) -> None:
        self._eventos: list[tuple] = []
        self._ids: set = set()  # message_ids seen: a second copy is a republished message
        self._repetidas = 0
        self._pedidos: dict[str, dict] = {}
        self._finais = 0
        self._t0 = 0.0
        self._sujo = False
        self._desenhado = 0.0

    def _desenhar(self) -> None:
        with self._desenho:
            with self._cond:
                self._sujo = False
                self._desenhado = time.monotonic()
                pedidos = sorted(self._pedidos.items(), key=lambda kv: kv[1]["ultimo"], reverse=True)
                n_eventos, repetidas, t0 = len(self._eventos), self._repetidas, self._t0
                totais = {e: 0 for e in ORDEM}
                for _, p in pedidos:
                    if p["estado"] is not None:
                        totais[p["estado"]] += 1
                recentes = [(pid, p["estado"], max(p["chegadas"], key=p["chegadas"].get), p["ultimo"])
                            for pid, p in pedidos[:LINHAS]]
            self.widget.value = _html(self.nome, len(pedidos), n_eventos, repetidas, t0, totais, recentes,
                                      self._situacao())

    def _situacao(self) -> str:
        if self.erro is not None:
            return f"parado: {self.erro!r}"
        if self._fechado or self._parar.is_set():
            return "fechado"
        return "ao vivo"

    # reading -----------------------------------------------------------------------------------
    @property
    def finalizados(self) -> int:
        """How many orders reached a final state (enviado, cancelado, estornado)."""
        with self._cond:
            return self._finais

    def esperar(self, n: int, timeout: float = 60) -> bool:
        """True once `n` orders reached a final state; False at the timeout (or at once if the
        panel has stopped), never later."""
        limite = time.monotonic() + timeout
        with self._cond:
            while self._finais < n:
                resta = limite - time.monotonic()
                if resta <= 0 or not self._thread.is_alive():
                    break
                self._cond.wait(min(resta, 0.25))
            feito = self._finais >= n
        self._desenhar()
        return feito

    def eventos(self):
        """Every event seen, in arrival order: t (s since the first), chave, tipo, pedido_id,
        message_id, redelivered (of the panel's own copy: False unless the panel's consumer was
        interrupted), repetida (a message_id seen before: the same message published again, as a
        relay that crashed before marking its row, or Pagamentos republishing a stored outcome, does)."""
        import pandas as pd

        with self._cond:
            linhas = [(t - self._t0, *resto) for t, *resto in self._eventos]
        return pd.DataFrame(linhas, columns=["t", "chave", "tipo", "pedido_id", "message_id", "redelivered",
                                             "repetida"])

    def estados(self):
        """One row per order (in order of first appearance): pedido_id, estado, motivo, and when
        each event key first arrived (s since the panel's first event; NaN if it never did)."""
        import pandas as pd

        with self._cond:
            linhas = [{"pedido_id": pid, "estado": p["estado"], "motivo": MOTIVOS.get(p["estado"], ""),
                       **{chave: t - self._t0 for chave, t in p["chegadas"].items()}}
                      for pid, p in self._pedidos.items()]
        colunas = ["pedido_id", "estado", "motivo", *CHAVES]
        tabela = pd.DataFrame(linhas)
        extras = [c for c in tabela.columns if c not in colunas]  # keys outside the contracts
        return tabela.reindex(columns=colunas + extras)

    def latencias(self):
        """Per stage (and in total): how many orders went through it and the p50, p95 and p99 of
        the time it took, in ms, from the arrival times of the events."""
        import numpy as np
        import pandas as pd

        with self._cond:
            chegadas = [dict(p["chegadas"]) for p in self._pedidos.values()]
        linhas = []
        for etapa, de, para in ETAPAS:
            ms = []
            for c in chegadas:
                inicio = [c[k] for k in de if k in c]
                fim = [c[k] for k in para if k in c]
                if inicio and fim:
                    ms.append((min(fim) - min(inicio)) * 1000)
            p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if ms else (np.nan,) * 3
            linhas.append({"etapa": etapa, "n": len(ms), "p50": p50, "p95": p95, "p99": p99})
        return pd.DataFrame(linhas).set_index("etapa").round(1)

    def vazao(self, por_segundo: bool = False):
        """Events per key over the run: a table `eventos`, `eventos/s` (over the span from the
        first event to the last); with `por_segundo`, the count of each key in each second."""
        import pandas as pd

        tabela = self.eventos()
        if por_segundo:
            if tabela.empty:
                return pd.DataFrame()
            return (tabela.assign(segundo=tabela["t"].astype(int)).groupby(["segundo", "chave"]).size()
                    .unstack(fill_value=0))
        duracao = float(tabela["t"].max()) if len(tabela) > 1 else 0.0
        contagem = tabela.groupby("chave").size().rename("eventos").to_frame()
        contagem["eventos/s"] = (contagem["eventos"] / duracao).round(1) if duracao > 0 else float("nan")
        ordem = [c for c in CHAVES if c in contagem.index] + [c for c in contagem.index if c not in CHAVES]
        return contagem.loc[ordem]

    def plot_latencias(self, title: str | None = None):
        """A matplotlib Figure (no pyplot): p50, p95 and p99 of each stage seen, in ms."""
        tabela = self.latencias()
        tabela = tabela[tabela["n"] > 0]
        fig = new_figure(8, 0.6 + 0.75 * max(len(tabela), 1))  # pyplot-free: shown once in Jupyter
        ax = fig.subplots()
        altura = 0.26
        for k, (coluna, cor) in enumerate([("p50", "#4a78a8"), ("p95", "#e69f00"), ("p99", "#d55e00")]):
            posicoes = [i + (k - 1) * altura for i in range(len(tabela))]
            barras = ax.barh(posicoes, tabela[coluna], height=altura, color=cor, label=coluna)
            ax.bar_label(barras, labels=[f"{v:.0f}" for v in tabela[coluna]], padding=2, fontsize=8)
        ax.set_yticks(range(len(tabela)), [f"{e} (n={n})" for e, n in zip(tabela.index, tabela["n"])])
        ax.invert_yaxis()
        ax.set_xlabel("ms")
        ax.margins(x=0.12)  # room for the labels
        fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
        ax.grid(axis="x", color="#eeeeee")
        ax.set_title(title or "Latência de cada etapa (do evento de entrada ao de saída)", fontsize=10)
        return fig

    # life --------------------------------------------------------------------------------------
    def limpar(self) -> None:
        """Forget every event and order seen so far (between two runs)."""
        with self._cond:
            self._zerar()
        self._desenhar()

    def close(self, timeout: float = 5.0) -> None:
        """Stop consuming, close the connection, end the thread; idempotent."""
        self._parar.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._fechado = True
        self._desenhar()

    @property
    def aberto(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> "Painel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Painel {self.nome!r} {self._situacao()}: {len(self._pedidos)} pedidos, "
                f"{self.finalizados} finalizados, {len(self._eventos)} eventos>")


def _html(nome, n_pedidos, n_eventos, repetidas, t0, totais, recentes, situacao) -> str:
    chips = " ".join(
        f'<span style="background:{CORES[e]};color:white;border-radius:8px;padding:1px 7px;margin-right:3px">'
        f"{html.escape(e)}: {n}</span>" for e, n in totais.items() if n)
    linhas = "".join(
        f'<tr><td style="padding:1px 8px">{html.escape(pid)}</td>'
        f'<td style="padding:1px 8px;color:{CORES.get(estado, "#333")};font-weight:bold">'
        f'{html.escape(str(estado or "?"))}{" (" + MOTIVOS[estado] + ")" if estado in MOTIVOS else ""}</td>'
        f'<td style="padding:1px 8px;font-family:monospace">{html.escape(chave)}</td>'
        f'<td style="padding:1px 8px;text-align:right">{ultimo - t0:.2f} s</td></tr>'
        for pid, estado, chave, ultimo in recentes)
    finalizados = sum(totais[e] for e in FINAIS)
    ultimo = max((r[3] for r in recentes), default=t0)
    duracao = f" em {ultimo - t0:.1f} s" if t0 else ""
    return (f'<div style="font-family:sans-serif;font-size:12px">'
            f"<b>{html.escape(nome)}</b> ({html.escape(situacao)}): {n_pedidos} pedidos, {finalizados} "
            f"finalizados, {n_eventos} eventos{f' ({repetidas} repetidos)' if repetidas else ''}{duracao}<br>"
            f"{chips or 'nenhum evento ainda'}"
            f'<table style="border-collapse:collapse;margin-top:4px">'
            f'<tr style="text-align:left"><th style="padding:1px 8px">pedido</th><th style="padding:1px 8px">estado</th>'
            f'<th style="padding:1px 8px">último evento</th><th style="padding:1px 8px">em t =</th></tr>'
            f"{linhas}</table></div>")


__all__ = ["Painel", "ESTADOS", "FINAIS", "ETAPAS"]
