"""Regularisation ablation of the airbench recipe: `cpu` / `headline` of configs/cifar10.py.

The full recipe, and the recipe without each of: random crop (2-pixel reflect padding),
random flip, label smoothing 0.2, weight decay, the one-cycle warmup, and flip test-time
augmentation (not a regulariser, but part of the recipe's accuracy). 3 seeds each.

Variants (--sweep=experiments/regularization.py:VARIANT):
  cpu   the cpu recipe (widths 32/64/64, batch 256, 1.6 epochs) on a fixed 10,000-image
        subset of CIFAR-10 train: 7 points x 3 seeds = 21 runs, for a 2-core CPU.
  full  the headline recipe (batch 1024, 10 epochs, bf16) on all 50,000 images, 5 seeds
        (35 runs): for a GPU.
"""

from cv_jax.analysis.sweep_definition import ablation, choose

VARIANTS = ("cpu", "full")

INGREDIENTS = {
    "crop augmentation": {"augment.crop_padding": 0},
    "flip augmentation": {"augment.flip": False},
    "label smoothing": {"loss.label_smoothing": 0.0},
    "weight decay": {"optimizer.weight_decay": 0.0},
    "LR warmup": {"schedule.warmup_fraction": 0.0},
    "flip TTA": {"eval.tta_flip": False},
}

SIZES = {
    "cpu": dict(config="configs/cifar10.py:cpu,epochs=1.6", seeds=(0, 1, 2),
                common={"dataset.max_train_examples": 10000}),
    "full": dict(config="configs/cifar10.py:headline", seeds=(0, 1, 2, 3, 4), common={}),
}


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    spec = SIZES[size]
    return ablation(f"regularization_{size}", spec["config"], INGREDIENTS, seeds=spec["seeds"],
                    common=spec["common"])
