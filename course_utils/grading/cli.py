"""`curso grade SUBMISSIONS --out RESULTS [...]`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from ..exercises.cli import project_root
    from .grade import GradeOptions, GradingRefused, grade

    exercises = Path(args.exercises) if args.exercises else project_root() / "exercises"
    submissions = Path(args.submissions)
    if not submissions.is_dir():
        raise SystemExit(f"erro: {submissions} não é uma pasta de entregas")
    options = GradeOptions(submissions=submissions, out=Path(args.out), exercises_dir=exercises,
                           workers=args.workers, timeout=args.timeout, cell_timeout=args.cell_timeout,
                           only=tuple(args.only or ()), force=args.force,
                           progress=not args.no_progress, allow_guest_broker=args.aceitar_broker_guest)
    try:
        summary = grade(options)
    except GradingRefused as exc:
        raise SystemExit(f"erro: {exc}") from None
    print(summary.table())
    print(f"\nresultados em {options.out}: grades.csv, results.jsonl, feedback/, summary.png, lms.csv, gradescope/")
    return 0


def default_workers() -> int:
    """Two workers per core, at most 8: a graded notebook spends most of its time waiting for the
    broker's statistics (the grader's own checks), not on a CPU (benchmarks/grading_vs_nbgrader.py:
    on 2 cores, 4 workers grade the chapter 2 class in 11.6 s, 2 workers in 14.0 s)."""
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def register(sub) -> None:
    p = sub.add_parser("grade", help="corrige as entregas de uma turma, cada aluno isolado no broker")
    p.add_argument("submissions", help="pasta com uma pasta ou zip por aluno")
    p.add_argument("--out", required=True, help="pasta dos resultados")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help=f"cadernos corrigidos em paralelo (padrão {default_workers()}: dois por núcleo, até 8)")
    p.add_argument("--timeout", type=float, default=600.0, help="segundos por caderno (padrão 600)")
    p.add_argument("--cell-timeout", type=float, default=60.0, help="segundos por célula (padrão 60)")
    p.add_argument("--only", nargs="+", metavar="NN", help="só estes capítulos, ex.: --only 02 03")
    p.add_argument("--force", action="store_true", help="corrige de novo o que já foi corrigido")
    p.add_argument("--exercises", help="pasta dos cadernos de exercícios canônicos (padrão: exercises/)")
    p.add_argument("--no-progress", action="store_true", help="sem barra de progresso")
    p.add_argument("--aceitar-broker-guest", action="store_true",
                   help="corrige mesmo sem isolamento de rede e com um broker que aceita guest em localhost "
                        "(um caderno corrigido poderia entrar nele)")
    p.set_defaults(func=_run)
