"""Exercises: the single-source format, the build of exercises/ and the check framework.

In an exercise notebook:  `from course_utils.exercises import verificar`, then `verificar("2.1", curso)`.
"""
from .checks import CheckContext, Exercise, Verdict, expect, get_exercise, judge, verificar

__all__ = ["verificar", "Exercise", "CheckContext", "expect", "get_exercise", "judge", "Verdict"]
