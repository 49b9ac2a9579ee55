"""Shared fixtures. Every test runs in strict mode (RabbitMQ 4.x compatibility) against a live broker."""
from __future__ import annotations

import os

import pytest

os.environ["CURSO_STRICT"] = "1"
os.environ.setdefault("CURSO_NO_DOCKER", "1")  # tests use the native node even where Docker runs

from course_utils import broker as broker_mod  # noqa: E402
from course_utils import strict  # noqa: E402
from course_utils.native import NativeNode, Ports, free_offset  # noqa: E402

strict.enable()


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
