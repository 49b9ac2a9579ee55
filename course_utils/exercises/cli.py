"""`curso exercises build | check | list`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import build, metadata as fmt


def project_root(start: Path | None = None) -> Path:
    """The course folder: the nearest parent of the current directory holding solutions/."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "solutions").is_dir():
            return folder
    raise SystemExit("erro: não achei a pasta solutions/; rode o comando dentro da pasta do curso (ou use --root).")


def _run(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve() if args.root else project_root()
    try:
        if args.action == "build":
            changed = build.build_all(root)
            for path in changed:
                print(f"escrito: {path.relative_to(root)}")
            print(f"exercises/ em dia ({len(changed)} arquivo(s) alterado(s)).")
            return 0
        if args.action == "check":
            reasons = build.stale(root)
            for reason in reasons:
                print(reason, file=sys.stderr)
            if reasons:
                print("exercises/ está desatualizado: rode `curso exercises build` e faça commit.", file=sys.stderr)
                return 1
            print("exercises/ está em dia com solutions/.")
            return 0
        if args.action == "list":
            for path in sorted((root / "solutions").glob("*.ipynb")):
                totals = fmt.exercises(fmt.read(path))
                listed = ", ".join(f"{k} ({v:g} pt)" for k, v in totals.items())
                print(f"{path.name}: {listed}")
            return 0
    except fmt.FormatError as exc:
        print(f"erro de formato: {exc}", file=sys.stderr)
        return 2
    return 2


def register(sub) -> None:
    p = sub.add_parser("exercises", help="gera e confere exercises/ a partir de solutions/")
    p.add_argument("action", choices=["build", "check", "list"])
    p.add_argument("--root", help="pasta do curso (padrão: a que contém solutions/)")
    p.set_defaults(func=_run)
