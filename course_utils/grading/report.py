"""The grade book: grades.csv, feedback/<student>.md (pt-BR), summary.png and the terminal table;
exports for platforms: gradescope/<student>/results.json (Gradescope's autograder results) and
lms.csv (student id, total, one column per exercise: the shape LMS gradebooks import)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .status import Status


@dataclass
class Summary:
    grades: pd.DataFrame
    pass_rate: pd.Series
    graded: int = 0
    skipped: int = 0
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    def table(self) -> str:
        lines = [self.grades.to_string(index=False), "",
                 "taxa de acerto por exercício:",
                 self.pass_rate.map(lambda r: f"{r:.0%}").to_string()]
        lines.append(f"\n{self.graded} caderno(s) corrigido(s), {self.skipped} já corrigido(s) antes "
                     f"(pulados), em {self.seconds:.1f} s.")
        return "\n".join(lines)


def write_all(out: Path, rows: list[dict], canonicals, students: list[str]) -> Summary:
    exercises = [ex for c in canonicals for ex in c.exercises]
    max_points = {ex: pts for c in canonicals for ex, pts in c.exercises.items()}
    frame = pd.DataFrame(rows, columns=["student", "notebook", "exercise", "points", "max_points", "status", "reason"])
    frame = frame[frame["exercise"].isin(exercises) & frame["student"].isin(students)]

    grades = pd.DataFrame({"student": sorted(students)})
    for ex in exercises:
        got = frame[frame["exercise"] == ex].set_index("student")["points"]
        grades[ex] = grades["student"].map(got).fillna(0.0)
    grades["total"] = grades[exercises].sum(axis=1)
    grades["max"] = float(sum(max_points.values()))
    grades.to_csv(out / "grades.csv", index=False)

    passed = frame.assign(ok=frame["status"] == Status.PASSED).groupby("exercise")["ok"].mean()
    pass_rate = passed.reindex(exercises).fillna(0.0)

    feedback_dir = out / "feedback"
    feedback_dir.mkdir(exist_ok=True)
    files = [out / "grades.csv"]
    for student in students:
        path = feedback_dir / f"{student}.md"
        path.write_text(feedback(student, frame[frame["student"] == student], canonicals), encoding="utf-8")
        files.append(path)
    files.append(plot_summary(grades, pass_rate, out / "summary.png"))
    files.append(write_lms_csv(grades, exercises, out / "lms.csv"))
    for student in students:
        files.append(write_gradescope(frame[frame["student"] == student], canonicals,
                                      out / "gradescope" / student / "results.json"))
    return Summary(grades, pass_rate, files=files)


def write_lms_csv(grades: pd.DataFrame, exercises: list[str], path: Path) -> Path:
    """student_id,total,<exercise>...: one row per student, numbers with a dot, as Moodle's and
    Canvas's gradebook imports read them (the column names map to grade items on import)."""
    frame = grades[["student", "total", *exercises]].rename(columns={"student": "student_id"})
    frame.to_csv(path, index=False, float_format="%g")
    return path


def gradescope_results(rows: pd.DataFrame, canonicals) -> dict:
    """One submission's results in Gradescope's autograder format (`results.json`): a test per
    exercise, with its points, status and the pt-BR reason as its output."""
    tests = []
    for canonical in canonicals:
        for ex, pts in canonical.exercises.items():
            row = rows[rows["exercise"] == ex]
            if row.empty:
                status, got, reason = Status.MISSING, 0.0, "caderno não entregue"
            else:
                status, got, reason = row.iloc[0]["status"], float(row.iloc[0]["points"]), row.iloc[0]["reason"]
            status = Status(status)
            output = status.pt + (f": {reason}" if reason and status is not Status.PASSED else "")
            tests.append({"name": f"Exercício {ex} ({canonical.name})", "number": ex, "score": got,
                          "max_score": float(pts), "status": "passed" if status is Status.PASSED else "failed",
                          "output": output, "visibility": "visible"})
    return {"score": sum(t["score"] for t in tests), "output_format": "text", "visibility": "visible",
            "tests": tests}


def write_gradescope(rows: pd.DataFrame, canonicals, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gradescope_results(rows, canonicals), ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def feedback(student: str, rows: pd.DataFrame, canonicals) -> str:
    total = rows["points"].sum()
    maximum = sum(sum(c.exercises.values()) for c in canonicals)
    lines = [f"# Correção — {student}", "", f"**Total: {total:g} de {maximum:g} pontos.**", ""]
    for canonical in canonicals:
        lines += [f"## {canonical.name}", "", "| Exercício | Pontos | Situação |", "| --- | --- | --- |"]
        details = []
        for ex, pts in canonical.exercises.items():
            row = rows[rows["exercise"] == ex]
            if row.empty:
                status, got, reason = Status.MISSING, 0.0, "caderno não entregue"
            else:
                status, got, reason = Status(row.iloc[0]["status"]), row.iloc[0]["points"], row.iloc[0]["reason"]
            lines.append(f"| {ex} | {got:g} / {pts:g} | {status.pt} |")
            if status is not Status.PASSED and reason:
                details += [f"### Exercício {ex}", "", "> " + str(reason).replace("\n", "\n> "), ""]
        lines += ["", *details]
    lines.append("Para conferir sozinho, rode a célula de verificação de cada exercício no JupyterLab.")
    return "\n".join(lines) + "\n"


def prepare_plotting() -> None:
    """Import matplotlib (Agg) for `plot_summary`; `grade` calls it in a thread while the notebooks
    run, so the import (about 1 s) is not paid after the last one."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot  # noqa: F401


def plot_summary(grades: pd.DataFrame, pass_rate: pd.Series, path: Path) -> Path:
    prepare_plotting()
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    maximum = float(grades["max"].iloc[0]) if len(grades) else 1.0
    left.hist(grades["total"], bins=min(20, max(5, int(maximum) + 1)), range=(0, maximum),
              color="#4c72b0", edgecolor="white")
    left.set_title("Distribuição das notas")
    left.set_xlabel(f"pontos (de {maximum:g})")
    left.set_ylabel("alunos")
    right.bar(pass_rate.index.astype(str), pass_rate.values * 100, color="#55a868")
    right.set_ylim(0, 100)
    right.set_title("Acerto por exercício")
    right.set_ylabel("% dos alunos")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
