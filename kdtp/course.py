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
    # --- 10: multi-teacher (block owned by 10_multi_teacher) ---
    # a second teacher: the lab's teacher trained again with another seed (teacher_seed 1). In
    # cpu_air for 6 epochs instead of the lab teacher's 10: the notebook then trains what it needs
    # in about 9 min on 2 AVX2 cores (issue 20's bound is 10), for a teacher_b one to two points
    # weaker (6 epochs: 89.7%, 10: 91.6%; benchmarks/RESULTS.md)
    Run("teacher_b", role="teacher", pretrained=True, overrides={"teacher_seed": 1},
        recipe_overrides={"cpu_air": {"teacher_epochs": 6}}),
    # the student of teacher_b alone (the lab's teacher's is student_pretrained_kd_logits)
    Run("student_kd_teacher_b", method="kd_logits", teacher="teacher_b", pretrained=True),
    # students of both teachers: their soft targets averaged, or weighted per image (CA-MKD)
    Run("student_multi_mean", method="kd_multi_mean", teacher=("teacher_resnet50", "teacher_b"), pretrained=True),
    Run("student_multi_confidence", method="kd_multi_confidence", teacher=("teacher_resnet50", "teacher_b"),
        pretrained=True),
    # --- end 10 ---
    # --- 11: student size (block owned by 11_student_size) ---
    # students of other widths than the recipe's, from scratch, labels only and logit KD from the
    # lab's teacher; which sizes each recipe uses is kdtp.student_size.FAMILY (its own student
    # is the scratch pair of 05). The arch is explicit: the same network in every recipe.
    Run("student_w4_baseline", arch="cnn_w4"), Run("student_w4_kd_logits", method="kd_logits", arch="cnn_w4"),
    Run("student_w8_baseline", arch="cnn_w8"), Run("student_w8_kd_logits", method="kd_logits", arch="cnn_w8"),
    Run("student_w16_baseline", arch="cnn_w16"), Run("student_w16_kd_logits", method="kd_logits", arch="cnn_w16"),
    Run("student_w32_baseline", arch="cnn_w32"), Run("student_w32_kd_logits", method="kd_logits", arch="cnn_w32"),
    # the airbench-style family of the `cpu_air` recipe (its own student, air_small, is 05's pair)
    *(Run(f"student_air_{w}_{kind}", method=method, arch=f"air_{w}") for w in ("w4", "w8", "w24")
      for kind, method in (("baseline", "baseline"), ("kd_logits", "kd_logits"))),
    # --- end 11 ---
    # --- 12: compression (block owned by 12_compress) ---
    # the distilled student of 03, pruned or factorised, then fine-tuned for one epoch with the
    # same logit KD from the lab's teacher; the amount or rank is in the method's name (its hash)
    Run("student_kd_pruned", method="kd_prune80", init_from="student_pretrained_kd_logits",
        overrides={"epochs": 1}),
    Run("student_kd_channels", method="kd_channels50", init_from="student_pretrained_kd_logits",
        overrides={"epochs": 1}),
    Run("student_kd_lowrank", method="kd_lowrank25", init_from="student_pretrained_kd_logits",
        overrides={"epochs": 1}),
    # --- end 12 ---
)}
