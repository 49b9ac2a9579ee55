"""`curso grade`: grade a class of exercise notebooks, each student isolated on a locked-down broker.

See docs/grading.md for the instructor's guide and the threat model.
"""
from .grade import GradeOptions, grade

__all__ = ["grade", "GradeOptions"]
