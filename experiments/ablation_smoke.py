"""Tiny ablation of the smoke recipe, to check the machinery end to end on a 2-core CPU.

The smoke recipe (configs/cifar10.py: airbench at widths 8/16/16, a fixed 512-image subset of
CIFAR-10 train, 2 epochs = 16 steps of 64, tested on a fixed 256-image subset of test) in full
and without each of label smoothing, crop + flip augmentation and weight decay: 4 points x 3
seeds = 12 runs. So short a training leaves the accuracies near 20-25%, where the seeds'
spread is as large as any ingredient's effect: it tests the sweep, not the ingredients.

    make ablation ABLATION=experiments/ablation_smoke.py
"""

from cv_jax.analysis.sweep_definition import ablation, choose


def get_sweep(arg=None):
    choose(arg, ("cpu",))  # one size only
    return ablation(
        name="ablation_smoke",
        config="configs/cifar10.py:smoke",
        ingredients={
            "label smoothing": {"loss.label_smoothing": 0.0},
            "crop + flip augmentation": {"augment.crop_padding": 0, "augment.flip": False},
            "weight decay": {"optimizer.weight_decay": 0.0},
        },
        seeds=(0, 1, 2),
    )
