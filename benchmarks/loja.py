"""The shop's load path on this machine (chapter 13): N orders sent as `CriarPedido` commands to
`pedidos.comandos` (as chapter 10's notebook sends them, one confirmed publish each) through
pedidos + relay + estoque --compensar + pagamentos + logistica + notificacoes, timed from the
first command until the panel saw every order reach a final state (`Painel.esperar(N)`).

Then the bottleneck: Pagamentos with a slow card gateway (`--atraso`), alone and as 3 competing
workers on the same queue and the same database.

    .venv/bin/python benchmarks/loja.py [--pedidos 1000] [--atraso 0.01] [--versao 4] [--rodadas 1]

Each configuration runs in a fresh vhost with fresh databases; start-up is not timed. The order mix:
1 in 10 costs more than Pagamentos accepts (refused, then the reservation released: `estornado`),
1 in 25 asks for an item out of stock (`cancelado`), the rest are shipped (`enviado`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid

os.environ.setdefault("CURSO_NO_DOCKER", "1")

import pika  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.background import Background  # noqa: E402
from course_utils.loja import catalogo  # noqa: E402
from course_utils.loja.painel import Painel  # noqa: E402

ESTOQUE = "camisa=1000000,caneca=1000000,tenis=1000000,bone=0"
ITENS = {"enviado": [{"sku": "camisa", "quantidade": 1}, {"sku": "caneca", "quantidade": 2}],
         "estornado": [{"sku": "tenis", "quantidade": 2}],    # R$ 598 > --rejeitar-acima 500
         "cancelado": [{"sku": "bone", "quantidade": 1}]}      # no stock
MARCAS = {"pedidos": "gravou pedido", "relay": "marcou a linha", "logistica": "publicou logistica.enviado"}
NOTIFICAR = "pagamento.*,estoque.indisponivel,estoque.liberado,logistica.enviado"


def destino(n: int) -> str:
    return "cancelado" if n % 25 == 24 else "estornado" if n % 10 == 9 else "enviado"


def servicos(bg: Background, dados, pagamentos: int, atraso: float, comuns: list, intervalo: float) -> None:
    bg.module("pedidos", "course_utils.loja.pedidos", "--dados", dados, *comuns)
    bg.module("relay", "course_utils.loja.relay", "--dados", dados, "--intervalo", intervalo, *comuns)
    bg.module("estoque", "course_utils.loja.estoque", "--dados", dados, "--estoque", ESTOQUE, "--compensar", *comuns)
    for i in range(1, pagamentos + 1):
        bg.module(f"pagamentos-{i}", "course_utils.loja.pagamentos", "--dados", dados, "--rejeitar-acima", 500,
                  "--atraso", atraso, *comuns)
    bg.module("logistica", "course_utils.loja.logistica", "--dados", dados, *comuns)
    bg.module("notificacoes", "course_utils.loja.notificacoes", "--chaves", NOTIFICAR, *comuns)
    for w in bg.workers.values():
        if not w.wait_for("pronto", timeout=30):
            sys.exit(f"{w.name} did not start:\n{w.output()}")


def enviar(channel, n: int) -> None:
    for k in range(n):
        itens = ITENS[destino(k)]
        pedido_id = f"p-{k + 1}"
        pedido = {"pedido_id": pedido_id, "cliente": "ana", "itens": itens, "total": catalogo.valor(itens)}
        channel.basic_publish(
            exchange="", routing_key="pedidos.comandos", body=json.dumps(pedido),
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
                type="CriarPedido", message_id=str(uuid.uuid4()), correlation_id=pedido_id))


def cpu(pid: int) -> float:
    campos = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(campos[11]) + int(campos[12])) / os.sysconf("SC_CLK_TCK")


def rodada(n: int, pagamentos: int = 1, atraso: float = 0.0, comuns: list = (), intervalo: float = 0.02) -> dict:
    curso = setup("bench-loja")
    bg = Background(curso)
    painel = Painel(curso)
    connection = pika.BlockingConnection(curso.params())
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        servicos(bg, bg.folder / "dados", pagamentos, atraso, list(comuns), intervalo)
        cpu_antes = {name: cpu(w.pid) for name, w in bg.workers.items()}
        driver_antes = sum(os.times()[:2])  # this process: the sends, the panel's thread, bg's readers
        inicio, t0 = time.perf_counter(), time.time()
        enviar(channel, n)
        enviados = time.perf_counter() - inicio
        ok = painel.esperar(n, timeout=300)
        segundos = time.perf_counter() - inicio
        estados = painel.estados()["estado"].value_counts().to_dict()
        cpu_s = {name: round(cpu(w.pid) - cpu_antes[name], 2) for name, w in bg.workers.items()}
        # when each service did its main work: the relay's last row is the critical path
        trabalho = {}
        for name, w in bg.workers.items():
            ts = [t - t0 for t, linha in w.records() if MARCAS.get(name.split("-")[0], "(corr") in linha]
            trabalho[name] = f"{ts[0]:.2f}-{ts[-1]:.2f}" if ts else "-"
        return {"ok": ok, "segundos": segundos, "enviados_s": enviados, "latencias": painel.latencias(),
                "estados": estados, "cpu": cpu_s, "trabalho": trabalho,
                "cpu_driver": sum(os.times()[:2]) - driver_antes,
                "versao": curso.management.overview()["rabbitmq_version"]}
    finally:
        painel.close()
        bg.stop_all(quiet=True)
        curso.cleanup(connection, delete_vhost=True)


def relatorio(titulo: str, r: dict, n: int) -> None:
    print(f"\n{titulo}  (RabbitMQ {r['versao']})")
    print(f"  {n} orders in {r['segundos']:.2f} s = {n / r['segundos']:.0f} orders/s "
          f"(commands sent in {r['enviados_s']:.2f} s){'' if r['ok'] else '  ** NOT ALL FINISHED **'}")
    print(f"  final states: {r['estados']}")
    print("  CPU s: " + ", ".join(f"{k} {v}" for k, v in r["cpu"].items()) + f", this process {r['cpu_driver']:.2f}")
    print("  work from-to (s): " + ", ".join(f"{k} {v}" for k, v in r["trabalho"].items()))
    lat = r["latencias"]
    for etapa, linha in lat.iterrows():
        if linha["n"]:
            print(f"  {etapa:42} n={int(linha['n']):5}  p50 {linha['p50']:8.1f} ms  p95 {linha['p95']:8.1f} ms"
                  f"  p99 {linha['p99']:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pedidos", type=int, default=1000)
    parser.add_argument("--atraso", type=float, default=0.01, help="Pagamentos' gateway time (s) in the bottleneck runs")
    parser.add_argument("--versao", default=os.environ.get("CURSO_BROKER", ""), help="'' (3.10) or '4'")
    parser.add_argument("--rodadas", type=int, default=1, help="runs of the plain configuration (median shown)")
    parser.add_argument("--so-carga", action="store_true", help="skip the bottleneck runs")
    parser.add_argument("--prefetch", type=int, default=None, help="--prefetch for every service")
    parser.add_argument("--intervalo-relay", type=float, default=0.02,
                        help="the relay's --intervalo (its default, 0.2, idles 0.2 s after every 100 rows)")
    args = parser.parse_args()
    os.environ["CURSO_BROKER"] = args.versao
    comuns = ["--prefetch", args.prefetch] if args.prefetch else []
    n = args.pedidos

    corridas = [rodada(n, comuns=comuns, intervalo=args.intervalo_relay) for _ in range(args.rodadas)]
    if args.rodadas > 1:
        print("plain runs:", ", ".join(f"{r['segundos']:.2f} s" for r in corridas),
              f"median {statistics.median(r['segundos'] for r in corridas):.2f} s")
    relatorio("1 Pagamentos, no gateway delay", sorted(corridas, key=lambda r: r["segundos"])[len(corridas) // 2], n)
    if args.so_carga:
        return
    for k in (1, 3):
        relatorio(f"{k} Pagamentos, gateway {args.atraso * 1000:.0f} ms per charge",
                  rodada(n, pagamentos=k, atraso=args.atraso, comuns=comuns, intervalo=args.intervalo_relay), n)


if __name__ == "__main__":
    main()
