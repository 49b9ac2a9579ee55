"""What the suite removes from the course brokers after a run (tests/suite_vhosts.py)."""
from __future__ import annotations

from suite_vhosts import SuiteLock, suite_vhosts


def test_the_suites_vhosts_and_nothing_a_learner_made():
    names = ["/", "curso-cap02", "curso-ex02", "curso-cap08-l08a", "curso-cap02-tgw3", "curso-teste-handle-tmain",
             "curso-cap04-tgw1-nav", "curso-cap02-fresh1-tgw0", "curso-toolkit-lead-tgw12", "meu-vhost-tgw0",
             "curso-cap02-tgwx"]
    assert suite_vhosts(names) == ["curso-cap02-tgw3", "curso-teste-handle-tmain", "curso-cap04-tgw1-nav",
                                   "curso-cap02-fresh1-tgw0", "curso-toolkit-lead-tgw12"]


def test_clean_up_waits_for_the_last_suite(tmp_path):
    path = tmp_path / "suites.lock"
    first, second = SuiteLock(path), SuiteLock(path)
    try:
        assert first.alone()
        first.share()
        assert not second.alone()  # the first suite still runs: the second leaves the vhosts alone
        second.share()
        first.close()  # the first one ends
        assert second.alone()
    finally:
        first.close()
        second.close()
