"""Distillation study: a half-width airbench student (widths 16/32/32) trained alone and
distilled from the full-width teacher of experiments/distill_teacher.py
(alpha 0.9, temperature 4), on the same data and schedule as the teacher.

    make distill-study            # the teacher, both students, the report
"""

from cv_jax.analysis.sweep_definition import Point, Sweep, choose

VARIANTS = ("cpu", "full")
SIZES = {  # the teacher's (experiments/distill_teacher.py)
    "cpu": {"dataset.max_train_examples": 10000, "training.num_epochs": 4.0},
    "full": {"training.num_epochs": 10.0},
}

TEACHER = "runs/sweeps/distill_teacher_{size}/airbench_32_64_64"


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    teacher = TEACHER.format(size=size)
    return Sweep(
        name=f"distill_{size}",
        config="configs/cifar10.py:cpu,epochs=1.6",  # the recipe as these results were run
        points=[
            Point({}, name="student_alone", label="student alone"),
            Point({"distill.teacher": teacher, "distill.alpha": 0.9,
                   "distill.temperature": 4.0}, name="student_distilled",
                  label="student distilled (alpha 0.9, T 4)"),
        ],
        common={**SIZES[size], "model.widths": (16, 32, 32), "distill.checkpoint": "latest"},
        description=f"Teacher: {teacher} (airbench 32/64/64).",
    )
