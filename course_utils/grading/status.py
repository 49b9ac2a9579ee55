"""The one status type of a graded exercise, with its pt-BR label and its severity."""
from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """A graded exercise's outcome. A `str`, so it is written to results.jsonl and compared as its value."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    MISSING = "missing"
    INVALID = "invalid"

    def __str__(self) -> str:
        return self.value

    @property
    def pt(self) -> str:
        """The label a learner reads in the feedback."""
        return _PT[self]

    @property
    def severity(self) -> int:
        """Order among the check cells of one exercise: the most severe outcome is the exercise's."""
        return list(Status).index(self)


_PT = {Status.PASSED: "certo", Status.FAILED: "não passou", Status.ERROR: "erro", Status.TIMEOUT: "tempo esgotado",
       Status.MISSING: "não entregue", Status.INVALID: "inválido"}
