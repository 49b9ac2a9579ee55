"""course_utils.grading.confine: the private network namespace graded kernels live in."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from course_utils.grading.confine import NetNamespace, guest_brokers, refusal, unavailable_reason

needs_namespace = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@needs_namespace
def test_inside_sees_only_its_own_loopback():
    outside = socket.create_server(("127.0.0.1", 0))
    port = outside.getsockname()[1]
    namespace = NetNamespace().open()
    try:
        with namespace.inside():
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1)
            inner = socket.create_server(("127.0.0.1", port))  # the same port is free in there
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            inner.close()
            child = subprocess.run([sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"],
                                   capture_output=True)
            assert child.returncode != 0, "a process started inside reached a port outside"
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # the thread is back outside
    finally:
        namespace.close()
        outside.close()


@needs_namespace
def test_close_kills_what_lives_inside():
    namespace = NetNamespace().open()
    with namespace.inside():
        sleeper = subprocess.Popen(["sleep", "300"])
    inside = namespace.processes()
    assert sleeper.pid in inside and len(inside) >= 2  # the holder (and its port mapper) too
    namespace.close()
    sleeper.wait(timeout=5)
    assert not [pid for pid in inside if _alive(pid)]


@needs_namespace
def test_close_from_inside_kills_the_rest_but_not_the_caller():
    """/proc/PID/ns/net is the namespace of the process's leading thread: while that thread is inside,
    the process itself is among `processes()`, and close() must not SIGKILL it (a pytest worker or a
    grader would die). Run in a child, which the bug kills."""
    code = ("import subprocess; from course_utils.grading.confine import NetNamespace\n"
            "n = NetNamespace().open()\n"
            "with n.inside():\n"
            "    sleeper = subprocess.Popen(['sleep', '30'])\n"
            "    n.close()\n"
            "print('survived', sleeper.wait(timeout=5), flush=True)\n")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert child.returncode == 0 and child.stdout.split() == ["survived", "-9"], (child.returncode, child.stdout,
                                                                                  child.stderr[-500:])


@needs_namespace
def test_a_grader_killed_with_sigkill_leaves_nothing_inside():
    code = ("from course_utils.grading.confine import NetNamespace; import sys, time; n = NetNamespace().open(); "
            "print(' '.join(map(str, n.processes())), flush=True); time.sleep(300)")
    grader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in grader.stdout.readline().split()]
    assert pids
    grader.kill()
    grader.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [p for p in pids if _alive(p)]:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]


def test_refusal_names_the_broker_and_the_ways_out():
    text = refusal(["127.0.0.1:5672"], "isolamento de rede precisa de root")
    assert "127.0.0.1:5672" in text and "guest" in text and "curso broker down" in text
    assert "--aceitar-broker-guest" in text


def test_guest_brokers_finds_the_course_broker(course_broker):
    found = guest_brokers()
    assert "127.0.0.1:5672" in found  # the course broker accepts guest from localhost
