"""Shared fixtures. Every test runs in strict mode (RabbitMQ 4.x compatibility) against a live broker."""
from __future__ import annotations

import os

import pytest

os.environ["CURSO_STRICT"] = "1"
os.environ.setdefault("CURSO_NO_DOCKER", "1")  # tests use the native node even where Docker runs
# Each pytest-xdist worker (and a plain run) gets vhosts of its own, notebooks run under the tests
# included (they inherit the environment): `curso-cap02-tgw0`, never the learner's `curso-cap02`.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
# After a suffix given from outside (kept once, for the workers too), so that two suites run side by
# side never share a vhost either.
SUITE_SUFFIX = os.environ.setdefault("CURSO_SUITE_SUFFIX", os.environ.get("CURSO_VHOST_SUFFIX", ""))
os.environ["CURSO_VHOST_SUFFIX"] = f"{SUITE_SUFFIX}-t{WORKER}"

from course_utils import broker as broker_mod  # noqa: E402
from course_utils import strict  # noqa: E402
from course_utils.native import NativeNode, Ports, free_offset  # noqa: E402

strict.enable()


def pytest_addoption(parser):
    parser.addoption("--chapter", default=None, metavar="NN",
                     help="run only the tests of chapter NN (its notebook, solution, exercises, grading)")


def pytest_collection_modifyitems(config, items):
    # The long tests (whole notebooks, extra nodes) first, so that parallel workers don't end on a
    # tail of them; the order is the same on every worker, as pytest-xdist requires.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    wanted = config.getoption("--chapter")
    if not wanted:
        return
    wanted = f"{int(wanted):02d}"
    keep, drop = [], []
    for item in items:
        mark = item.get_closest_marker("chapter")
        (keep if mark is not None and mark.args and mark.args[0] == wanted else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(scope="session")
def course_broker():
    """The course broker (started if needed), as the notebooks see it."""
    saved = os.environ.pop("RABBITMQ_URL", None)
    try:
        yield broker_mod.ensure_broker()
    finally:
        if saved is not None:
            os.environ["RABBITMQ_URL"] = saved


@pytest.fixture
def spare_node(tmp_path):
    """A native node (not started) on free ports in a temporary folder; stopped afterwards."""
    node = NativeNode(tmp_path / "node", name=f"teste{os.getpid()}", ports=Ports.offset(free_offset()),
                      die_with_parent=True)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def course_broker4():
    """The RabbitMQ 4.x course broker (`curso broker up --versao 4`; started here if needed), as the
    notebooks see it with CURSO_BROKER=4. Skipped only where it cannot exist (not root); on a machine
    that can run it (CI runs as root), failing to start it is an error, never a silent skip."""
    from course_utils.rabbit4 import Rabbit4Unavailable

    saved = os.environ.pop("RABBITMQ_URL", None)
    try:
        try:
            yield broker_mod.ensure_broker(timeout=180, versao="4")
        except Rabbit4Unavailable as exc:
            if os.name == "posix" and os.geteuid() == 0:
                raise
            pytest.skip(f"sem RabbitMQ 4.x nesta máquina: {exc}")
    finally:
        if saved is not None:
            os.environ["RABBITMQ_URL"] = saved


@pytest.fixture(scope="module")
def default_stats_node(tmp_path_factory):
    """A node with RabbitMQ's default 5 s statistics (`native.DEFAULT_STATS`), as a Docker user gets
    it: what the live monitor and the trace must show there too."""
    from course_utils.native import DEFAULT_STATS, NativeNode, Ports, free_offset

    node = NativeNode(tmp_path_factory.mktemp("estatisticas5s") / "node", name=f"estat5s{os.getpid()}",
                      ports=Ports.offset(free_offset()), die_with_parent=True, advanced_config=DEFAULT_STATS)
    node.start()
    yield node
    node.stop()
