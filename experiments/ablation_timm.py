"""Ablation of the timm-style regularisation stack (the `timm` recipe of configs/cifar10.py).

ResNet-18 (CIFAR stem), Nesterov SGD, cosine LR with 5 warmup epochs, label smoothing 0.1,
mixup (0.8) / CutMix (1.0) switched per batch, RandAugment (2 ops, magnitude 9), random erasing
0.25, weight decay 5e-4. Removed one at a time: mixup/CutMix, RandAugment, random erasing,
label smoothing, weight decay, the LR warmup. 3 seeds each.

Variants (--sweep=experiments/ablation_timm.py:VARIANT):
  cpu   reduced for a 2-core CPU: a fixed 5,000-image subset, 3 epochs (warmup 0.5), batch 128
        (21 runs). Regularisers need long training to pay off: expect them to cost accuracy here.
  full  the recipe as it is: all 50,000 images, 200 epochs (21 runs): for a GPU.
"""

from cv_jax.analysis.sweep_definition import ablation, choose

VARIANTS = ("cpu", "full")

INGREDIENTS = {
    "mixup / CutMix": {"mixup.mixup_alpha": 0.0, "mixup.cutmix_alpha": 0.0},
    "RandAugment": {"augment.auto_augment": ""},
    "random erasing": {"augment.erasing_prob": 0.0},
    "label smoothing": {"loss.label_smoothing": 0.0},
    "weight decay": {"optimizer.weight_decay": 0.0},
    "LR warmup": {"schedule.warmup_epochs": 0.0},
}

SIZES = {
    "cpu": {"dataset.max_train_examples": 5000, "training.num_epochs": 3.0,
            "schedule.warmup_epochs": 0.5, "training.batch_size": 128,
            "optimizer.learning_rate": 0.1},
    "full": {},
}


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    return ablation(f"ablation_timm_{size}", "configs/cifar10.py:timm", INGREDIENTS,
                    common=SIZES[size])
