"""Seconds per area of a test run, from its JUnit report.

    python benchmarks/suite_cost.py .reports/junit.xml [--budget-chapter 90]

Areas: foundation (broker, nodes, sandbox, strict mode, exercise format), toolkit (pictures, lab,
monitor, widgets, their demo notebook), grading (`curso grade` itself), and one per chapter (its
notebook, solution notebook, checks, wrong answers, blank exercises and its grading). The test
seconds of an area add up the time of its tests; under pytest-xdist they overlap, so the wall time
of the run (the report's suite time) is printed too, and each area's wall share: its test seconds
times wall / all test seconds, the part of the run's wall time the area accounts for. The chapter
budget (design.md: the suite's wall time is the sum of the areas' budgets) applies to the wall
share, since wall time is what CI's 90-minute limit counts: 90 s a chapter, 120 s for the chapter
that runs a 3-node cluster (CLUSTER_BUDGET).
"""
from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

TOOLKIT = {"test_topology", "test_routing", "test_trace", "test_throughput", "test_monitor", "test_widgets",
           "test_browser", "test_background", "test_cluster", "test_loja", "test_loja_services", "test_sequence",
           "test_painel"}
GRADING = {"test_grading", "test_execute"}
_PARAM = re.compile(r"\[(.*)\](?:@[\w.-]+)?$")  # "@group": an xdist_group tag


def area_of(classname: str, name: str) -> str:
    """The area of one test case (`tests.test_exercises`, `test_wrong_answer_fails_its_check[5.1-x]`)."""
    module = classname.rsplit(".", 1)[-1]
    match = _PARAM.search(name)
    param = match.group(1) if match else ""
    chapter = None
    path = re.search(r"(?:notebooks|solutions|exercises)/(\d\d)_", param)
    if path:
        chapter = path.group(1)
    elif re.match(r"^\d+\.\d+(-|$)", param):
        chapter = f"{int(param.split('.')[0]):02d}"
    elif re.match(r"^\d\d$", param):
        chapter = param
    if "docs/" in param or module in TOOLKIT:
        return "toolkit"
    if chapter is not None:
        return f"chapter {chapter}"
    if module in GRADING:
        return "grading"
    return "foundation"


def read(report: Path) -> tuple[dict[str, list[float]], float, int, int]:
    """({area: [seconds of each test]}, wall seconds, failures, errors) of a JUnit report."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    areas: dict[str, list[float]] = defaultdict(list)
    failures = errors = 0
    for case in root.iter("testcase"):
        if case.find("skipped") is not None:
            continue
        areas[area_of(case.get("classname", ""), case.get("name", ""))].append(float(case.get("time", 0)))
        failures += case.find("failure") is not None
        errors += case.find("error") is not None
    wall = sum(float(s.get("time", 0)) for s in suites)
    return areas, wall, failures, errors


def wall_shares(areas: dict[str, list[float]], wall: float) -> dict[str, float]:
    """{area: seconds of the run's wall time it accounts for}: test seconds scaled by wall / total."""
    total = sum(sum(v) for v in areas.values())
    return {a: (sum(v) * wall / total if total else 0.0) for a, v in areas.items()}


def table(areas: dict[str, list[float]], wall: float) -> str:
    order = sorted(areas, key=lambda a: (a.startswith("chapter"), a))
    total = sum(sum(v) for v in areas.values())
    shares = wall_shares(areas, wall)
    lines = [f"{'area':<12} {'tests':>6} {'test s':>9} {'wall s':>8} {'share':>6}", "-" * 45]
    for area in order:
        seconds = sum(areas[area])
        lines.append(f"{area:<12} {len(areas[area]):>6} {seconds:>9.1f} {shares[area]:>8.1f} "
                     f"{seconds / total:>6.0%}" if total else area)
    lines.append("-" * 45)
    lines.append(f"{'all tests':<12} {sum(len(v) for v in areas.values()):>6} {total:>9.1f} {wall:>8.1f}")
    lines.append(f"{'wall time':<12} {'':>6} {'':>9} {wall:>8.1f}  ({wall / 60:.1f} min)")
    return "\n".join(lines)


# design.md: the chapter that starts a 3-node cluster (chapter 8) may take 120 s of the run.
CLUSTER_BUDGET = {"chapter 08": 120.0}


def budget(area: str, chapter_budget: float) -> float:
    return max(chapter_budget, CLUSTER_BUDGET.get(area, 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--budget-chapter", type=float, default=90.0,
                        help="flag chapters whose wall share exceeds this (default 90; design.md)")
    args = parser.parse_args(argv)
    if not args.report.exists():
        print(f"no report at {args.report}", file=sys.stderr)
        return 2
    areas, wall, failures, errors = read(args.report)
    print(f"\nSuite cost ({args.report}): {failures} failed, {errors} errors")
    print(table(areas, wall))
    shares = wall_shares(areas, wall)
    over = [a for a in areas if a.startswith("chapter") and shares[a] > budget(a, args.budget_chapter)]
    if over:
        print(f"over the {args.budget_chapter:.0f} s chapter budget (wall share): "
              + ", ".join(f"{a} ({shares[a]:.0f} s of {budget(a, args.budget_chapter):.0f})" for a in sorted(over)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
