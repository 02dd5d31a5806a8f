"""The runs of the chapter's notebooks after the core lab (07 onwards), declared as data.

Declared here rather than in the notebooks so that every tool knows them: ``python -m kdtp
train NAME``, ``publish`` (an instructor pre-trains and publishes the whole course) and
``sweep`` (seeds). Each is one ``Run``; the notebook that trains it shows the declaration.
"""
from __future__ import annotations

from .runs import Run

COURSE_RUNS: dict[str, Run] = {r.name: r for r in (
    # 07: attention transfer + logit KD from the lab's teacher (compare: student_pretrained_kd_logits)
    Run("student_kd_attention", method="kd_attention", pretrained=True),
    # 08: relational KD (distances and angles) + logit KD (compare: student_pretrained_kd_logits)
    Run("student_kd_relations", method="kd_relations", pretrained=True),
    # 09: born-again networks: generation 0 is the scratch baseline of 02 (labels only); each
    # next generation, of the same architecture, learns from the one before
    Run("born_again_gen1", method="kd_logits", teacher="student_scratch_baseline"),
    Run("born_again_gen2", method="kd_logits", teacher="born_again_gen1"),
    # 09: progressive self-KD: no teacher, its own previous epoch (compare: student_scratch_baseline)
    Run("student_ps_kd", method="ps_kd"),
)}
