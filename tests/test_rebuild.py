"""course_utils.grading.rebuild, step by step, on tiny notebooks (no kernel, no broker)."""
from __future__ import annotations

import nbformat
import pytest

from course_utils.exercises.build import PLACEHOLDER
from course_utils.grading import rebuild as rb
from course_utils.grading.grade import GradeOptions, Job, triage
from course_utils.grading.status import Status


def _code(source, role=None, exercise=None, cell_id=None, **extra):
    cell = nbformat.v4.new_code_cell(source)
    if role:
        cell.metadata["curso"] = {"role": role, "exercise": exercise, **extra}
    if cell_id:
        cell["id"] = cell_id
    return cell


def canonical():
    nb = nbformat.v4.new_notebook()
    nb.cells = [_code("curso = setup('ex09')", cell_id="setup"),
                nbformat.v4.new_markdown_cell("Enunciado 9.1", id="st1"),
                _code(PLACEHOLDER.format(id="9.1"), "answer", "9.1", "ans1"),
                _code('verificar("9.1", curso)', "check", "9.1", "chk1", points=2),
                _code(PLACEHOLDER.format(id="9.2"), "answer", "9.2", "ans2"),
                _code('verificar("9.2", curso)', "check", "9.2", "chk2", points=1)]
    return nb


def student(*cells):
    nb = canonical()
    nb.cells = list(cells)
    return nb


def test_strip_markers_removes_nbval_markers_tags_and_outputs():
    cell = _code("# NBVAL_SKIP\nx = 1")
    cell.metadata["tags"] = ["raises-exception"]
    cell.metadata["nbval"] = {"skip": True}
    cell.outputs = [nbformat.v4.new_output("stream", text="oi")]
    cell.execution_count = 3
    clean = rb.strip_markers(cell)
    assert clean.source.strip() == "x = 1" and "tags" not in clean.metadata and "nbval" not in clean.metadata
    assert clean.outputs == [] and clean.execution_count is None
    assert cell.metadata["tags"] == ["raises-exception"]  # a copy: the input is untouched


def test_check_chapter_refuses_another_chapters_notebook():
    other = student(_code("x", "answer", "3.1"), _code('verificar("3.1", curso)', "check", "3.1"))
    with pytest.raises(rb.InvalidSubmission, match="3.1.*9.1, 9.2.*outro capítulo"):
        rb.check_chapter(canonical(), other)
    rb.check_chapter(canonical(), student(_code("x", "answer", "9.1")))  # one of ours: fine
    rb.check_chapter(canonical(), student(_code("x")))  # no metadata at all: left to the answers


def test_collect_answers_by_metadata_by_handed_out_id_and_with_added_cells():
    answers = rb.collect_answers(canonical(), student(
        _code("a = 1", "answer", "9.1"),
        _code("def ajuda(): pass"),                    # added after 9.1's answer: part of it
        _code('print("edited check")', "check", "9.1"),  # a check ends the answer
        _code("b = 2", cell_id="ans2"),                 # metadata lost, id kept
    ))
    assert [c.source for c in answers["9.1"]] == ["a = 1", "def ajuda(): pass"]
    assert [c.source for c in answers["9.2"]] == ["b = 2"]
    assert all(c.metadata["curso"]["role"] == "answer" for cells in answers.values() for c in cells)


def test_splice_answers_keeps_canonical_checks_and_placeholders():
    theirs = {"9.1": [_code("a = 1", "answer", "9.1")]}
    cells, answered = rb.splice_answers(canonical(), theirs)
    sources = [c.source for c in cells]
    assert sources[2] == "a = 1" and sources[3] == 'verificar("9.1", curso)'
    assert sources[4] == PLACEHOLDER.format(id="9.2")  # not given: the canonical placeholder
    assert answered == {"9.1": True, "9.2": False}
    _, answered = rb.splice_answers(canonical(), {"9.1": [_code(PLACEHOLDER.format(id="9.1"), "answer", "9.1")]})
    assert answered["9.1"] is False  # the placeholder handed back is not an answer


def test_with_prelude_and_unique_ids():
    cells = rb.with_prelude([_code("a", cell_id="x"), _code("b", cell_id="x"), _code("c")], 1000)
    assert cells[0]["id"] == rb.PRELUDE_ID and "max_output_bytes=1000" in cells[0].source
    ids = [c["id"] for c in rb.unique_ids(cells)]
    assert len(set(ids)) == len(ids) == 4


def test_index_cells_counts_code_cells_only():
    answers, checks = rb.index_cells(canonical().cells)
    assert answers == {1: "9.1", 3: "9.2"}
    assert checks == {2: ("9.1", 2.0), 4: ("9.2", 1.0)}


def test_rebuild_is_the_pipeline():
    rebuilt = rb.rebuild(canonical(), student(_code("a = 1", "answer", "9.1")))
    assert rebuilt.notebook.cells[0]["id"] == rb.PRELUDE_ID
    assert rebuilt.answered == {"9.1": True, "9.2": False}
    assert rebuilt.check_cells == {3: ("9.1", 2.0), 5: ("9.2", 1.0)}


def _job(content=None, problem=None):
    nb = canonical()
    can = type("C", (), {"name": "09_x.ipynb", "notebook": nb, "exercises": {"9.1": 2.0, "9.2": 1.0}})()
    return Job("ana", can, content, problem, "d")


@pytest.mark.parametrize("content,problem,status", [
    (None, None, Status.MISSING),                                            # not submitted
    (b"{not json", None, Status.INVALID),                                    # malformed
    (None, "arquivo .zip corrompido", Status.INVALID),                        # a problem found on discovery
    (nbformat.writes(canonical()).encode(), None, Status.MISSING),            # nothing answered
])
def test_triage_decides_known_outcomes_before_any_kernel(tmp_path, content, problem, status):
    options = GradeOptions(submissions=tmp_path, out=tmp_path, exercises_dir=tmp_path)
    decided = triage(_job(content, problem), options)
    assert isinstance(decided, list) and {r.status for r in decided} == {status}


def test_triage_hands_answered_notebooks_on(tmp_path):
    nb = canonical()
    nb.cells[2].source = "a = 1"
    options = GradeOptions(submissions=tmp_path, out=tmp_path, exercises_dir=tmp_path)
    assert isinstance(triage(_job(nbformat.writes(nb).encode()), options), rb.Rebuilt)


def test_status_is_one_type_with_pt_labels_and_severity():
    assert Status("passed") is Status.PASSED and str(Status.FAILED) == "failed"
    assert Status.MISSING.pt == "não entregue"
    assert Status.PASSED.severity < Status.FAILED.severity < Status.ERROR.severity
    assert all(s.pt for s in Status)


def test_notebooks_with_a_cluster_of_their_own_are_graded_one_at_a_time(monkeypatch, tmp_path):
    """A chapter whose notebook starts its own 3-node cluster (metadata curso.cluster) is graded
    alone whatever --workers says, held until its kernel is gone; other chapters run beside it.
    Kernels, runs and clean-ups are stand-ins: only the scheduling is under test."""
    import asyncio
    import contextlib
    import threading
    import time
    from types import SimpleNamespace

    from course_utils.grading import execute, grade as gr

    def canonical(cluster: bool):
        nb = nbformat.v4.new_notebook()
        if cluster:
            nb.metadata["curso"] = {"cluster": True}
        return gr.Canonical("08_x.ipynb" if cluster else "02_x.ipynb", nb, {}, "digest")

    with_cluster, without = canonical(True), canonical(False)
    assert with_cluster.uses_cluster and not without.uses_cluster
    jobs = [(SimpleNamespace(student=f"aluno{i}", canonical=c), None)
            for i, c in enumerate([with_cluster, with_cluster, without, with_cluster, without])]
    spans, lock = [], threading.Lock()

    async def prepare(*_args, **_kwargs):
        return SimpleNamespace(started=None)

    async def run(job, _rebuilt, prepared, _options):
        prepared.started = (job.canonical.uses_cluster, time.monotonic())
        await asyncio.sleep(0.2)
        return []

    async def cleanup(prepared, _broker):
        await asyncio.sleep(0.1)  # the kernel (and its nodes) going: still inside the cluster's turn
        uses, started = prepared.started
        with lock:
            spans.append((uses, started, time.monotonic()))

    monkeypatch.setattr(execute, "prepare", prepare)
    monkeypatch.setattr(execute, "cleanup", cleanup)
    monkeypatch.setattr(gr, "_run", run)
    broker = SimpleNamespace(inside=contextlib.nullcontext)
    options = gr.GradeOptions(submissions=tmp_path, out=tmp_path, exercises_dir=tmp_path, workers=4)
    gr.execute_all(jobs, broker, None, options, lambda results: None)
    clusters = sorted((s, e) for uses, s, e in spans if uses)
    assert len(clusters) == 3 and len(spans) == 5
    assert all(later[0] >= earlier[1] for earlier, later in zip(clusters, clusters[1:])), clusters
    others = [(s, e) for uses, s, e in spans if not uses]
    assert any(s < clusters[0][1] for s, _e in others)  # another chapter ran beside the first cluster
