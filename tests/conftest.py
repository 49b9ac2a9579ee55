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
from course_utils.native import NativeNode, Ports, free_offset, release_offset  # noqa: E402
from suite_vhosts import SuiteLock, drop  # noqa: E402

strict.enable()


def _drop_suite_vhosts(when: str) -> None:
    for versao in (None, "4"):
        broker = broker_mod.running_broker(versao)
        if broker is not None:
            try:
                gone = drop(broker)
            except Exception as exc:  # clean-up reports, it never fails a run
                print(f"\n[suite] could not remove the suite's vhosts on {broker.display_url()}: {exc}")
                continue
            if gone:
                print(f"\n[suite] {when}: removed {gone} test vhosts from {broker.display_url()}")


def pytest_sessionstart(session):
    # The controller only (xdist workers have workerinput); before xdist starts its workers.
    if hasattr(session.config, "workerinput"):
        return
    lock = session.config._curso_suite_lock = SuiteLock()
    if lock.alone():
        _drop_suite_vhosts("left by an earlier run")
    lock.share()


@pytest.hookimpl(trylast=True)  # after xdist has ended its workers (their fixtures torn down)
def pytest_sessionfinish(session):
    lock = getattr(session.config, "_curso_suite_lock", None)
    if lock is None:
        return
    if lock.alone():
        _drop_suite_vhosts("this run's")
    lock.close()


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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session):
    """Make `--dist loadgroup` group again. pytest-xdist 3.8.0 tags an `xdist_group` test by
    setting `item._nodeid` to "<nodeid>@<group>", but pytest 9 reads `nodeid` from `item._id`, so
    the tag never reaches the scheduler and every group is spread like `--dist load`. Copy the
    tagged id where pytest 9 reads it (workers only; nothing to do where xdist already worked)."""
    from _pytest.nodeid import NodeId

    for item in session.items:
        tagged = vars(item).get("_nodeid")
        if isinstance(tagged, str) and "@" in tagged and item.nodeid != tagged:
            item._id = NodeId.parse(tagged)


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
    offset = free_offset(lease=True)  # leased: another worker's node cannot pick it before ours binds
    node = NativeNode(tmp_path / "node", name=f"teste{os.getpid()}", ports=Ports.offset(offset),
                      die_with_parent=True)
    yield node
    node.stop()
    release_offset(offset)


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

    offset = free_offset(lease=True)  # leased (see spare_node): a fresh-clone run saw two nodes pick one block
    node = NativeNode(tmp_path_factory.mktemp("estatisticas5s") / "node", name=f"estat5s{os.getpid()}",
                      ports=Ports.offset(offset), die_with_parent=True, advanced_config=DEFAULT_STATS)
    node.start()
    yield node
    node.stop()
    release_offset(offset)
