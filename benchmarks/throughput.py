"""Throughput lab figures on this machine, in one run:

1. the helper's own overhead: a bare pika publish loop (the tutorial's) against
   measure_publish(confirm="none"), interleaved, median of 5 rounds each (target: ratio >= 0.90);
2. the helper's table: confirms none / per message / batch of 100, transient vs persistent;
   consume with prefetch 1 / 10 / 100; and whether the orderings match RabbitMQ's documented
   behaviour (per-message confirms far slower than batches; prefetch 1 slowest).

    .venv/bin/python benchmarks/throughput.py [--count 20000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

os.environ.setdefault("CURSO_NO_DOCKER", "1")

import pandas as pd  # noqa: E402
import pika  # noqa: E402

from course_utils import setup  # noqa: E402
from course_utils.throughput import compare, measure_publish  # noqa: E402


def bare_publish_rate(curso, count: int, size: int) -> float:
    """The official tutorial's loop, nothing else: msg/s."""
    connection = pika.BlockingConnection(curso.params())
    channel = connection.channel()
    queue = f"bench.bare.{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue=queue, durable=True)
    body = b"x" * size
    try:
        started = time.perf_counter()
        for _ in range(count):
            channel.basic_publish(exchange="", routing_key=queue, body=body)
        return count / (time.perf_counter() - started)
    finally:
        channel.queue_delete(queue=queue)
        connection.close()


def overhead(curso, count: int, size: int, rounds: int = 5) -> tuple[float, float]:
    bare, helper = [], []
    for _ in range(rounds):
        bare.append(bare_publish_rate(curso, count, size))
        helper.append(measure_publish(curso, count=count, size=size, confirm="none", progress=False).rate)
    return statistics.median(bare), statistics.median(helper)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    curso = setup("bench-vazao")
    try:
        measure_publish(curso, count=5_000, progress=False)  # warm-up (connections, code paths)
        bare, helper = overhead(curso, args.count, args.size)
        print(f"publish, no confirms, {args.count} x {args.size} B, median of 5 interleaved rounds")
        print(f"  bare pika loop:           {bare:10,.0f} msg/s")
        print(f"  measure_publish():        {helper:10,.0f} msg/s")
        print(f"  ratio helper / bare:      {helper / bare:10.3f}   (target >= 0.90)\n")

        n, size = args.count, args.size
        grid = [{"confirm": c, "persistent": p, "count": n if c != "message" else n // 2,
                 "size": size, "batch_size": 100}
                for c in ("none", "message", "batch") for p in (False, True)]
        grid += [{"operation": "consume", "prefetch": k, "count": n if k > 1 else n // 2, "size": size}
                 for k in (1, 10, 100)]
        df = compare(curso, grid, progress=False)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(df.drop(columns=["tamanho_bytes", "fila", "nacks"]).to_string(index=False))
        publish = df[df["operação"] == "publicar"].set_index(["confirmação", "persistente"])["msg/s"]
        consume = df[df["operação"] == "consumir"].set_index("prefetch")["msg/s"]
        print()
        for persistent, label in ((False, "transient"), (True, "persistent")):
            ratio = publish["lote de 100", persistent] / publish["por mensagem", persistent]
            print(f"batch of 100 / per-message confirms, {label}: {ratio:.1f}x (expected: batches far faster)")
        print(f"prefetch 1 slowest: {consume.idxmin() == 1}  "
              f"(1: {consume[1]:,.0f}, 10: {consume[10]:,.0f}, 100: {consume[100]:,.0f} msg/s)")
    finally:
        curso.cleanup(delete_vhost=True)


if __name__ == "__main__":
    main()
