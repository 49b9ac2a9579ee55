"""Broker start-up figures: cold start of a native node, `ensure_broker` when already running, and
a chapter `setup()` (median of 10). Targets: cold start <= 10 s, warm setup() <= 0.3 s.

    .venv/bin/python benchmarks/broker_start.py
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CURSO_NO_DOCKER", "1")

from course_utils import broker, setup  # noqa: E402
from course_utils.native import NativeNode, Ports, free_offset  # noqa: E402


def timed(fn, repeat: int = 10) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        node = NativeNode(Path(tmp) / "node", name=f"bench{os.getpid()}", ports=Ports.offset(free_offset()))
        started = time.perf_counter()
        node.start(timeout=60)
        cold = time.perf_counter() - started
        node.stop()
        started = time.perf_counter()
        node.start(timeout=60)  # data dir already there
        restart = time.perf_counter() - started
        node.stop()

    broker.ensure_broker()
    ensure = timed(lambda: broker.ensure_broker(refresh=True))
    cached = timed(lambda: broker.ensure_broker())
    setups = timed(lambda: setup("bench-setup"))
    setup("bench-setup").cleanup(delete_vhost=True)

    print(f"cold start of a native node (empty data dir): {cold:6.2f} s   (target <= 10 s)")
    print(f"restart of a native node (existing data):     {restart:6.2f} s")
    print(f"ensure_broker() when running, rediscovered:   {statistics.median(ensure) * 1000:6.1f} ms (median of 10)")
    print(f"ensure_broker() when running, cached:         {statistics.median(cached) * 1000:6.1f} ms (median of 10)")
    print(f"setup('capNN') warm (vhost recreated):        {statistics.median(setups) * 1000:6.1f} ms (median of 10; target <= 300 ms)")


if __name__ == "__main__":
    main()
