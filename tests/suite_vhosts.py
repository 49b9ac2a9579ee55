"""The vhosts a test run leaves on the course brokers, and their removal.

Every notebook and test the suite runs gets vhosts named after its worker (`curso-cap02-tgw3`,
`curso-teste-handle-tmain`, `curso-cap04-tgw1-nav`: conftest's CURSO_VHOST_SUFFIX). They stay on
the course broker after the run, and a broker with some hundred of them took over a minute to boot
(`make test` then failed in `curso broker up`). The controller removes them at the end of the run,
and at its start those an earlier run left (killed, say), but only while no other suite runs on the
machine: a suite holds a shared lock for its whole run, and clean-up needs it exclusive."""
from __future__ import annotations

import fcntl
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# A suite's vhost: the course prefix, a name, any suite suffix, then the worker (gw<n> or main),
# and at most one more tag (the browser test's "-nav"). A learner's `curso-cap02` never matches.
SUITE_VHOST = re.compile(r"^curso-.+-t(?:gw\d+|main)(?:-[a-z0-9]+)?$")
LOCK = Path(tempfile.gettempdir()) / "curso-suites.lock"


def suite_vhosts(names) -> list[str]:
    return [name for name in names if SUITE_VHOST.match(name)]


def drop(broker) -> int:
    """Delete the suite vhosts on `broker` (a course_utils Broker); how many went."""
    mgmt = broker.management()
    doomed = suite_vhosts(v["name"] for v in mgmt.vhosts())
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(mgmt.delete_vhost, doomed))
    return len(doomed)


class SuiteLock:
    """Shared while a suite runs; `alone()` says whether it can be had exclusively right now
    (no other suite runs), and keeps it exclusive until `share()`."""

    def __init__(self, path: Path = LOCK):
        self.file = open(path, "a+")

    def alone(self) -> bool:
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def share(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_SH)

    def close(self) -> None:
        self.file.close()
