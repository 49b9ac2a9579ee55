"""`python -m course_utils.nbval_main ARGS`: `python -m pytest ARGS` for notebook runs, with two fixes.

- Start-up: nbval reads notebooks with nbformat, whose schema validation imports jsonschema, which
  imports the optional `rfc3987_syntax` when it is installed (JupyterLab's jupyter-events brings it);
  that module builds a grammar at import time (1.5 s on an idle 2-core machine, 5 s under load), only
  to check IRI formats no notebook field uses. Marking it absent makes jsonschema skip that check.
- Load: nbval waits at most 5 s (hard-coded) for a cell's next output message and, past that, stops
  the kernel and fails the cell and every later one. On a loaded machine (the suite's workers, a
  class being graded) a kernel can be starved that long while a cell is fine; the cell's own
  timeout (`--nbval-cell-timeout`) still bounds a cell that hangs.
"""
from __future__ import annotations

import sys

OUTPUT_TIMEOUT = 30.0


def main(argv: list[str]) -> int:
    sys.modules.setdefault("rfc3987_syntax", None)
    import pytest
    from nbval import plugin

    original = plugin.IPyNbCell.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.output_timeout = OUTPUT_TIMEOUT

    plugin.IPyNbCell.__init__ = __init__
    return pytest.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
