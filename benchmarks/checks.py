"""How long each exercise's check takes: on the solution, on the blank answer, on each wrong answer.

    python benchmarks/checks.py [--repeat 3] [--only 05] [--no-notebooks]

Each answer is judged as the grader judges it (`course_utils.exercises.judge`: the grader's
snapshot, `verificar` in this process, the grader's broker-side verify), in a fresh vhost, and
timed end to end; the figure is the median of `--repeat` runs. Then every blank exercise notebook
runs once under nbval, end to end (kernel start included). Targets on the course's 2-core machine:
median failing check <= 1.5 s, median passing check <= 1.0 s, every blank notebook <= 20 s.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CURSO_STRICT", "1")
os.environ.setdefault("CURSO_VHOST_SUFFIX", "-bench")

from course_utils import setup  # noqa: E402
from course_utils.exercises import judge, kit  # noqa: E402
from course_utils.exercises import metadata as fmt  # noqa: E402
from course_utils.nbrun import run_notebook  # noqa: E402

_SANDBOXES = itertools.count(1)


def answers(folder: str, chapter: str) -> dict[str, str]:
    """{exercise: answer-cell source} of the chapter's notebook in `folder`."""
    path = next((ROOT / folder).glob(f"{chapter}_*.ipynb"))
    nb = fmt.read(path)
    return {fmt.exercise_id(c): c.source for c in nb.cells if fmt.role(c) == "answer"}


def wrong_answers(chapter: str) -> dict[str, list[tuple[str, str]]]:
    path = ROOT / "tests" / "fixtures" / "wrong_answers" / f"cap{chapter}.py"
    if not path.exists():
        return {}
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {ex: [(entry[0], entry[1]) for entry in entries] for ex, entries in module.WRONG.items()}


def time_answer(exercise: str, source: str) -> tuple[float, bool]:
    """Seconds to judge `source` for `exercise` in a fresh vhost, and whether it passed."""
    curso = setup(f"bench-{os.getpid()}-{next(_SANDBOXES)}")
    ns = {"pika": pika, "curso": curso}
    try:
        started = time.perf_counter()
        try:
            exec(source, ns)
        except NotImplementedError:
            pass  # a blank script-style answer cell: the check then finds nothing
        verdict = judge(exercise, curso, ns)
        return time.perf_counter() - started, verdict.passed
    finally:
        for leaked in [o for o in gc.get_objects() if isinstance(o, pika.BlockingConnection) and kit.is_open(o)]:
            try:
                leaked.close()
            except Exception:  # noqa: BLE001
                pass
        curso.cleanup(delete_vhost=True)


def median_time(exercise: str, source: str, repeat: int) -> tuple[float, bool]:
    runs = [time_answer(exercise, source) for _ in range(repeat)]
    return statistics.median(t for t, _ in runs), all(ok for _, ok in runs)


def chapters(only: list[str]) -> list[str]:
    found = sorted(p.name[:2] for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    return [c for c in found if not only or c in only]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=[], help="chapter numbers, e.g. 04 05")
    parser.add_argument("--no-notebooks", action="store_true", help="skip the blank notebook runs")
    args = parser.parse_args(argv)
    passing, failing, surprises = [], [], []
    print(f"{'exercise':<8} {'answer':<58} {'s':>6}  verdict")
    for chapter in chapters([f"{int(c):02d}" for c in args.only]):
        solutions, blanks, wrong = answers("solutions", chapter), answers("exercises", chapter), wrong_answers(chapter)
        for exercise in solutions:
            cases = [("solução", solutions[exercise], True), ("em branco", blanks[exercise], False)]
            cases += [(f"errada: {what}", src, False) for what, src in wrong.get(exercise, [])]
            for label, source, should_pass in cases:
                seconds, passed = median_time(exercise, source, args.repeat)
                (passing if passed else failing).append(seconds)
                if passed != should_pass:
                    surprises.append((exercise, label))
                print(f"{exercise:<8} {label[:58]:<58} {seconds:>6.2f}  {'passou' if passed else 'falhou'}"
                      + ("" if passed == should_pass else "  <-- inesperado"), flush=True)
    print()
    if passing:
        print(f"passing checks: {len(passing)}, median {statistics.median(passing):.2f} s, max {max(passing):.2f} s (target median <= 1.0 s)")
    if failing:
        print(f"failing checks: {len(failing)}, median {statistics.median(failing):.2f} s, max {max(failing):.2f} s (target median <= 1.5 s)")
    if not args.no_notebooks:
        print("\nblank exercise notebooks, end to end (target <= 20 s each):")
        for chapter in chapters([f"{int(c):02d}" for c in args.only]):
            path = next((ROOT / "exercises").glob(f"{chapter}_*.ipynb"))
            started = time.perf_counter()
            run = run_notebook(path, cell_timeout=60)
            seconds = time.perf_counter() - started
            failed = len(run.failed())
            print(f"  {path.name:<32} {seconds:6.1f} s  ({failed} of {len(run.cells)} cells failed, as blank checks must)")
    if surprises:
        print(f"\nunexpected verdicts: {surprises}")
    return 1 if surprises else 0


if __name__ == "__main__":
    sys.exit(main())
