"""benchmarks/suite_cost.py: areas of test ids, and the table from a tiny JUnit report."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("suite_cost", ROOT / "benchmarks" / "suite_cost.py")
suite_cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite_cost)


def test_areas_of_test_ids():
    area = suite_cost.area_of
    assert area("tests.test_exercises", "test_wrong_answer_fails_its_check[5.1-auto ack]") == "chapter 05"
    assert area("tests.test_exercises", "test_solution_passes_its_check[12.3]") == "chapter 12"
    assert area("tests.test_exercises", "test_blank_exercises_fail_every_check[03]") == "chapter 03"
    assert area("tests.test_notebooks", "test_lesson_runs_on_310_then_again_on_4x[notebooks/02_primeiros_passos.ipynb]") == "chapter 02"
    assert area("tests.test_notebooks", "test_lesson_runs_on_310_then_again_on_4x[docs/toolkit_demo.ipynb]") == "toolkit"
    assert area("tests.test_grading", "test_committed_solutions_get_full_marks[04]") == "chapter 04"
    assert area("tests.test_grading", "test_rerun_skips_and_force_regrades") == "grading"
    assert area("tests.test_trace", "test_trace_sees_publish") == "toolkit"
    assert area("tests.test_exercises", "test_build_blanks_answers_and_keeps_checks") == "foundation"
    # an xdist_group test's id ends with its group (the cluster chapter's checks)
    assert area("tests.test_exercises", "test_wrong_answer_fails_its_check[8.3-no reconnect]@cluster08") == "chapter 08"


def test_table_from_a_tiny_report(tmp_path, capsys):
    report = tmp_path / "junit.xml"
    report.write_text("""<?xml version="1.0"?><testsuites><testsuite name="pytest" time="12.5">
<testcase classname="tests.test_exercises" name="test_solution_passes_its_check[2.1]" time="1.5"/>
<testcase classname="tests.test_exercises" name="test_solution_passes_its_check[2.2]" time="2.5"><failure message="x"/></testcase>
<testcase classname="tests.test_sandbox" name="test_setup" time="0.5"/>
<testcase classname="tests.test_sandbox" name="test_skipped" time="0"><skipped/></testcase>
</testsuite></testsuites>""")
    areas, wall, failures, errors = suite_cost.read(report)
    assert dict(areas) == {"chapter 02": [1.5, 2.5], "foundation": [0.5]}
    assert (wall, failures, errors) == (12.5, 1, 0)
    # 4.5 test seconds in a 12.5 s run: chapter 02 accounts for 4.0 / 4.5 of the wall time
    assert suite_cost.wall_shares(areas, wall)["chapter 02"] == 4.0 / 4.5 * 12.5
    assert suite_cost.main([str(report), "--budget-chapter", "11"]) == 0
    out = capsys.readouterr().out
    assert "chapter 02" in out and "4.0" in out and "11.1" in out
    assert "over the 11 s chapter budget (wall share): chapter 02 (11 s of 11)" in out
    assert suite_cost.main([str(report), "--budget-chapter", "12"]) == 0
    assert "over the" not in capsys.readouterr().out


def test_the_cluster_chapter_has_its_own_budget():
    assert suite_cost.budget("chapter 08", 90) == 120
    assert suite_cost.budget("chapter 02", 90) == 90
