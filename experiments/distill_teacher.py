"""The teacher of the distillation study: the cpu recipe (airbench, widths 32/64/64).

cpu size: a fixed 10,000-image subset of CIFAR-10 train, 4 epochs, the full 5,000-image
test split. experiments/distill.py then trains a half-width student with and without it;
`make distill-study` runs both stages.
"""

from cv_jax.analysis.sweep_definition import Point, Sweep, choose

VARIANTS = ("cpu", "full")
SIZES = {
    "cpu": {"dataset.max_train_examples": 10000, "training.num_epochs": 4.0},
    "full": {"training.num_epochs": 10.0},
}


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    return Sweep(
        name=f"distill_teacher_{size}",
        config="configs/cifar10.py:cpu,epochs=1.6",  # the recipe as these results were run
        points=[Point({}, name="airbench_32_64_64")],
        common=SIZES[size],
    )
