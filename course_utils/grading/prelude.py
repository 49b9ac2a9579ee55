"""Run first in every graded kernel: caps what the kernel prints, so that a runaway `print` loop
costs the student their own output, not the grader's memory."""
from __future__ import annotations

import sys


class _Capped:
    def __init__(self, stream, budget: list[int], limit: int):
        self._stream = stream
        self._budget = budget
        self._limit = limit

    def write(self, text):
        if self._budget[0] <= 0:
            return len(text)
        if len(text) > self._budget[0]:
            text = text[: self._budget[0]] + (
                f"\n[curso grade: saída cortada depois de {self._limit} caracteres]\n")
        self._budget[0] -= len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def install(max_output_bytes: int = 200_000) -> None:
    budget = [max_output_bytes]
    sys.stdout = _Capped(sys.stdout, budget, max_output_bytes)
    sys.stderr = _Capped(sys.stderr, budget, max_output_bytes)
