"""Grading throughput: a synthetic class of chapter 2 notebooks (correct, partial, blank) graded with
1 and 2 workers, and the per-notebook cost of isolation (vhost + user set-up and teardown).
Targets: isolation <= 0.2 s per notebook; 2 workers >= 1.6x one worker on a 2-core machine;
median <= 8 s per notebook (isolation on: each kernel in the grading node's network namespace
where the grader runs as root), blank notebooks decided without a kernel.

    .venv/bin/python benchmarks/grading.py [--students 20]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from course_utils.exercises import metadata as fmt
from course_utils.grading.gradebroker import GradingBroker
from course_utils.grading.grade import GradeOptions, grade

ROOT = Path(__file__).resolve().parents[1]
NAME = "02_primeiros_passos.ipynb"


def synthetic_class(folder: Path, students: int) -> None:
    solution = (ROOT / "solutions" / NAME).read_bytes()
    blank = (ROOT / "exercises" / NAME).read_bytes()
    partial_nb = fmt.read(ROOT / "solutions" / NAME)
    blank_nb = fmt.read(ROOT / "exercises" / NAME)
    blank_22 = next(c for c in blank_nb.cells if fmt.role(c) == "answer" and fmt.exercise_id(c) == "2.2")
    for cell in partial_nb.cells:
        if fmt.role(cell) == "answer" and fmt.exercise_id(cell) == "2.2":
            cell.source = blank_22.source
    import nbformat
    partial = nbformat.writes(partial_nb).encode()
    for i in range(students):
        student = folder / f"aluno{i:02d}"
        student.mkdir(parents=True)
        (student / NAME).write_bytes((solution, partial, blank)[i % 3])


def isolation_overhead(samples: int = 20) -> list[float]:
    with GradingBroker() as broker:
        times = []
        for i in range(samples):
            started = time.perf_counter()
            broker.drop(broker.space(f"bench{i}"))
            times.append(time.perf_counter() - started)
    return times


def _seconds_per_notebook(out: Path) -> list[float]:
    """Each notebook's grading time from results.jsonl (0 for one decided without a kernel)."""
    import json

    seen = {}
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        seen[(row["student"], row["notebook"])] = float(row.get("seconds", 0.0))
    return list(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=20)
    args = parser.parse_args()
    overhead = isolation_overhead()
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        subs = Path(tmp) / "entregas"
        synthetic_class(subs, args.students)
        for workers in (1, 2):
            out = Path(tmp) / f"resultados{workers}"
            started = time.perf_counter()
            summary = grade(GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises",
                                         only=("02",), workers=workers, progress=False))
            seconds = time.perf_counter() - started
            rates[workers] = summary.graded / seconds * 60
            totals = summary.grades["total"].value_counts().sort_index().to_dict()
            per_notebook = _seconds_per_notebook(out)
            print(f"{workers} worker(s): {summary.graded} notebooks in {seconds:6.1f} s = "
                  f"{rates[workers]:5.1f} notebooks/min (broker start included); totals {totals}; "
                  f"per notebook: median {statistics.median(per_notebook):.1f} s (target <= 8 s), "
                  f"max {max(per_notebook):.1f} s")
    print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x   (target >= 1.6x)")
    print(f"isolation (vhost + user create, then drop): median {statistics.median(overhead) * 1000:.0f} ms, "
          f"max {max(overhead) * 1000:.0f} ms per notebook   (target <= 200 ms)")


if __name__ == "__main__":
    main()
