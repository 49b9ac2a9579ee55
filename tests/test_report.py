"""course_utils.grading.report: the grade book and its exports, on a tiny class (no kernel, no broker)."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import pytest

from course_utils.grading import report


@dataclass
class _Canonical:
    name: str
    exercises: dict


CANONICALS = [_Canonical("02_primeiros_passos.ipynb", {"2.1": 1.0, "2.2": 2.0})]
ROWS = [
    {"student": "ana", "notebook": "02_primeiros_passos.ipynb", "exercise": "2.1", "points": 1.0, "max_points": 1.0,
     "status": "passed", "reason": ""},
    {"student": "ana", "notebook": "02_primeiros_passos.ipynb", "exercise": "2.2", "points": 0.0, "max_points": 2.0,
     "status": "failed", "reason": "A fila 'tarefas' ainda tem 2 mensagens sem ack."},
    {"student": "bia", "notebook": "02_primeiros_passos.ipynb", "exercise": "2.1", "points": 1.0, "max_points": 1.0,
     "status": "passed", "reason": ""},
]


@pytest.fixture
def written(tmp_path):
    report.write_all(tmp_path, ROWS, CANONICALS, ["ana", "bia"])
    return tmp_path


def _check_gradescope_format(results: dict) -> None:
    """The fields and types of Gradescope's autograder results.json (its "Autograder Specifications")."""
    assert set(results) <= {"score", "execution_time", "output", "output_format", "test_output_format",
                            "test_name_format", "visibility", "stdout_visibility", "extra_data", "tests",
                            "leaderboard"}
    assert isinstance(results["score"], float)
    assert results["visibility"] in {"visible", "hidden", "after_due_date", "after_published"}
    for test in results["tests"]:
        assert set(test) <= {"score", "max_score", "status", "name", "name_format", "number", "output",
                             "output_format", "tags", "visibility", "extra_data"}
        assert isinstance(test["score"], float) and isinstance(test["max_score"], float)
        assert test["status"] in {"passed", "failed"} and isinstance(test["name"], str)
        assert 0 <= test["score"] <= test["max_score"]


def test_gradescope_results_per_student(written):
    ana = json.loads((written / "gradescope" / "ana" / "results.json").read_text(encoding="utf-8"))
    _check_gradescope_format(ana)
    assert ana["score"] == 1.0
    by_number = {t["number"]: t for t in ana["tests"]}
    assert by_number["2.1"]["status"] == "passed" and by_number["2.2"]["status"] == "failed"
    assert "2 mensagens sem ack" in by_number["2.2"]["output"]  # the pt-BR reason reaches the student
    bia = json.loads((written / "gradescope" / "bia" / "results.json").read_text(encoding="utf-8"))
    _check_gradescope_format(bia)
    missing = {t["number"]: t for t in bia["tests"]}["2.2"]
    assert missing["score"] == 0.0 and missing["status"] == "failed" and "não entregue" in missing["output"]


def test_lms_csv_has_id_total_and_each_exercise(written):
    with (written / "lms.csv").open(encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["student_id", "total", "2.1", "2.2"]
    assert rows == [{"student_id": "ana", "total": "1", "2.1": "1", "2.2": "0"},
                    {"student_id": "bia", "total": "1", "2.1": "1", "2.2": "0"}]
