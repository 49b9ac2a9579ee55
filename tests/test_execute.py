"""course_utils.grading.execute without a broker: what the grader does to a forked kernel's pid."""
from __future__ import annotations

import subprocess

from course_utils.grading.execute import ForkedKernel


def _leader() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "30"], start_new_session=True)  # a process group, as a kernel's


def test_shutdown_kills_the_kernels_process_group(tmp_path):
    kernel_process = _leader()
    kernel = ForkedKernel(kernel_process.pid, tmp_path / "kernel.json")
    assert kernel.is_alive()
    kernel.shutdown_kernel()
    assert kernel_process.wait(5) == -9


def test_a_kernel_whose_pid_went_to_another_process_is_left_alone(tmp_path):
    """Linux reuses pids: once the kernel is gone, its pid may be a stranger's, which the grader
    must neither interrupt nor kill."""
    stranger = _leader()
    try:
        kernel = ForkedKernel(stranger.pid, tmp_path / "kernel.json")
        kernel.started -= 1  # the kernel that had this pid started earlier than the process now on it
        assert not kernel.is_alive()
        kernel.interrupt_kernel()
        kernel.shutdown_kernel()
        assert stranger.poll() is None, "the process that reused the kernel's pid was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_what_a_notebook_started_in_a_session_of_its_own_dies_after_it(tmp_path):
    """A Celery worker or a server a graded notebook started (course_utils.background runs them in
    sessions of their own, outside the kernel's process group) is killed after the notebook: it
    carries the kernel's environment (HOME inside the job's folder), or runs in that folder."""
    import os

    from course_utils.nbrun import kill_leftovers

    job = tmp_path / "curso-grade-job-x"
    (job / "home").mkdir(parents=True)
    by_env = subprocess.Popen(["sleep", "30"], start_new_session=True, env={**os.environ, "HOME": str(job / "home")})
    by_cwd = subprocess.Popen(["sleep", "30"], start_new_session=True, cwd=job)
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True, cwd=tmp_path)
    try:
        kill_leftovers(job)
        assert by_env.wait(5) == -9 and by_cwd.wait(5) == -9
        assert stranger.poll() is None, "a process of another folder was killed"
    finally:
        for proc in (by_env, by_cwd, stranger):
            proc.kill()
            proc.wait()
