"""The command a graded kernel starts with: `python -m course_utils.grading.kernel LIMIT -f FILE`.

Before IPython starts, the kernel process limits its own address space to LIMIT bytes (0: no
limit), so that a student's answer that allocates without bound ends that kernel alone, and asks
Linux to kill it when the grader's thread that started it goes away (`native.parent_death_signal`),
so that a grader killed mid-run leaves no kernel behind. Then it is an ordinary ipykernel.
"""
from __future__ import annotations

import os
import sys


def main() -> None:
    limit = int(sys.argv.pop(1))
    if limit and os.name == "posix":
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from ..native import parent_death_signal

    parent_death_signal()
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance()


if __name__ == "__main__":
    main()
