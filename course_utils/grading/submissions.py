"""Finding students' notebooks: one folder or zip per student, named by the student id."""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
MAX_ZIP_BYTES = 200 * 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class StudentWork:
    student: str
    source: Path
    notebooks: dict[str, bytes] = field(default_factory=dict)  # exercise notebook name -> content
    problems: dict[str, str] = field(default_factory=dict)     # notebook name -> why unreadable


def student_id(name: str) -> str:
    return _SAFE.sub("-", name).strip("-.")[:60] or "sem-nome"


def discover(submissions: Path, wanted: list[str]) -> list[StudentWork]:
    """Every student in SUBMISSIONS with the notebooks named in `wanted` that they handed in."""
    out: list[StudentWork] = []
    for entry in sorted(Path(submissions).iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            work = StudentWork(student_id(entry.name), entry)
            _from_folder(entry, wanted, work)
        elif entry.suffix.lower() == ".zip":
            work = StudentWork(student_id(entry.stem), entry)
            _from_zip(entry, wanted, work)
        else:
            continue
        out.append(work)
    return out


def _from_folder(folder: Path, wanted: list[str], work: StudentWork) -> None:
    for name in wanted:
        matches = sorted(p for p in folder.rglob(name) if ".ipynb_checkpoints" not in p.parts)
        if not matches:
            continue
        path = matches[0]
        if path.is_symlink():
            work.problems[name] = "o arquivo é um link simbólico; entregue o caderno em si"
        elif path.stat().st_size > MAX_NOTEBOOK_BYTES:
            work.problems[name] = f"o caderno tem mais de {MAX_NOTEBOOK_BYTES // 2**20} MiB"
        else:
            work.notebooks[name] = path.read_bytes()


def _from_zip(path: Path, wanted: list[str], work: StudentWork) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
                for name in wanted:
                    work.problems[name] = "o zip é grande demais"
                return
            for name in wanted:
                found = sorted((i for i in infos if Path(i.filename).name == name
                                and ".ipynb_checkpoints" not in i.filename and not i.is_dir()),
                               key=lambda i: i.filename)
                if not found:
                    continue
                if found[0].file_size > MAX_NOTEBOOK_BYTES:
                    work.problems[name] = f"o caderno tem mais de {MAX_NOTEBOOK_BYTES // 2**20} MiB"
                else:
                    work.notebooks[name] = archive.read(found[0])
    except (zipfile.BadZipFile, OSError) as exc:
        for name in wanted:
            work.problems[name] = f"não consegui abrir o zip: {exc}"
