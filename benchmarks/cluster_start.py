"""Chapter 8's local 3-node cluster (course_utils.cluster): start-up time and how long the cluster
takes to notice each failure tool, for both broker versions (median of 3 runs each).

    .venv/bin/python benchmarks/cluster_start.py                 # both versions, 3 runs each
    .venv/bin/python benchmarks/cluster_start.py --versions 4 --runs 1
    .venv/bin/python benchmarks/cluster_start.py --default-tick  # also a freeze with Erlang's 60 s tick

Start-up is split into boot (the three nodes booting at once, until each answers AMQP and the
management API) and join (nodes 2 and 3: stop_app, join_cluster, start_app, until every node's
/api/nodes lists the three running). Target: total <= 30 s on the 2-core machine.

Notice times are each tool's return value: seconds from the signal until every other running node
reports the node down (stop: SIGTERM; kill: SIGKILL; freeze: SIGSTOP, seen only after the Erlang
net tick) or, for bring_back (start again / SIGCONT), until every node reports all three running
with no partition. `net_ticktime` is read back from a node and from its CLI to show it applies.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("CURSO_NO_DOCKER", "1")

from course_utils.cluster import NET_TICKTIME, cluster, unavailable_reason  # noqa: E402

STEPS = [("parar (SIGTERM)", "stop_node", 3), ("voltar após parar", "bring_back", 3),
         ("matar (SIGKILL)", "kill_node", 2), ("voltar após matar", "bring_back", 2),
         ("congelar (SIGSTOP)", "freeze_node", 3), ("voltar após congelar (SIGCONT)", "bring_back", 3)]


TICKS: dict[str, str] = {}  # version -> net_ticktime read back from a node and its CLI


def ticktimes(c) -> str:
    node = c.nodes[0]
    server = node.ctl("eval", "net_kernel:get_net_ticktime().").stdout.strip()
    cli = node.ctl("eval", "rpc:call(node(group_leader()), net_kernel, get_net_ticktime, []).").stdout.strip()
    return f"node {server} s, CLI {cli} s"


def one_run(version: str, with_tools: bool = True) -> dict[str, float]:
    figures: dict[str, float] = {}
    with cluster("bench", versao=version) as c:
        figures.update(boot=c.timings["partida_s"], join=c.timings["juncao_s"], total=c.timings["total_s"])
        TICKS.setdefault(version, ticktimes(c))
        if with_tools:
            for label, method, node in STEPS:
                figures[label] = getattr(c, method)(node)
    return figures


def default_tick_freeze(version: str) -> float:
    with cluster("benchtick", versao=version, net_ticktime=60) as c:
        seconds = c.freeze_node(3, timeout=120)
        c.bring_back(3, timeout=180)
        return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", default="padrao,4", help="comma-separated: padrao (3.10), 4")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--default-tick", action="store_true",
                        help="also time a freeze with Erlang's default net_ticktime (60 s)")
    args = parser.parse_args(argv)
    failed = False
    for raw in args.versions.split(","):
        version = "4" if raw.strip() == "4" else ""
        label = "RabbitMQ 4.x (Debian 13 chroot)" if version == "4" else "RabbitMQ 3.10 (OS package)"
        reason = unavailable_reason(version)
        if reason:
            print(f"{label}: skipped: {reason}")
            continue
        runs = []
        for i in range(args.runs):
            started = time.monotonic()
            runs.append(one_run(version))
            print(f"  {label} run {i + 1}: start {runs[-1]['total']:.1f} s "
                  f"(boot {runs[-1]['boot']:.1f} + join {runs[-1]['join']:.1f}); whole run "
                  f"{time.monotonic() - started:.1f} s", flush=True)
        if not runs:
            if args.default_tick:
                print(f"{label}: noticed: freeze, net_ticktime 60 s {default_tick_freeze(version):6.2f} s", flush=True)
            continue
        print(f"\n{label}: median of {len(runs)} (net_ticktime {NET_TICKTIME} s; read back: {TICKS[version]})")
        for key in ("boot", "join", "total"):
            values = [r[key] for r in runs]
            print(f"  start-up {key:<28} {statistics.median(values):6.1f} s   "
                  f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
        total = statistics.median(r["total"] for r in runs)
        print(f"  {'target: start-up <= 30 s':<37} {'OK' if total <= 30 else 'OVER'}")
        failed |= total > 30
        for step, _method, _node in STEPS:
            values = [r[step] for r in runs]
            print(f"  noticed: {step:<28} {statistics.median(values):6.2f} s   "
                  f"(runs: {', '.join(f'{v:.2f}' for v in values)})")
        if args.default_tick:
            print(f"  noticed: {'freeze, net_ticktime 60 s':<28} {default_tick_freeze(version):6.2f} s", flush=True)
        print(flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
