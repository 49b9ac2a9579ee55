"""`curso grade`: grade a class of exercise notebooks, each student isolated on a locked-down broker.

See docs/grading.md for the instructor's guide and the threat model. The grader lives in
`course_utils.grading.grade` (`grade`, `GradeOptions`). This package imports nothing itself: a
graded kernel imports `course_utils.grading.prelude`, and must not pay for the grader's own
imports (nbformat's validator alone takes seconds).
"""
