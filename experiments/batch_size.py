"""Batch-size study: 32 to 1024 images per step with the learning rate scaled linearly.

ResNet-20, Nesterov SGD, LR 0.1 x batch / 128 (Goyal et al. 2017's linear scaling rule), a
linear warmup of a fixed number of epochs for every batch size, cosine decay, the classic
recipe of configs/cifar10.py otherwise. Training lasts a fixed number of epochs, so larger
batches take fewer steps.

Variants (--sweep=experiments/batch_size.py:VARIANT):
  cpu   reduced for a 2-core CPU: a fixed 10,000-image subset, 3 epochs (0.5 warmup), one seed
        (6 runs; batch 1024 then makes only 27 steps).
  full  all 50,000 images, 50 epochs (5 warmup), 3 seeds (18 runs), bf16: for a GPU.
"""

from cv_jax.analysis.sweep_definition import Sweep, axis, choose, zip_

VARIANTS = ("cpu", "full")
BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
BASE_LR, BASE_BATCH = 0.1, 128

SIZES = {
    "cpu": dict(config="configs/cifar10.py:cpu,model=resnet20", seeds=(0,),
                common={"dataset.max_train_examples": 10000, "training.num_epochs": 3.0,
                        "schedule.warmup_epochs": 0.5}),
    "full": dict(config="configs/cifar10.py:headline,model=resnet20", seeds=(0, 1, 2),
                 common={"training.num_epochs": 50.0, "schedule.warmup_epochs": 5.0}),
}


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    spec = SIZES[size]
    return Sweep(
        name=f"batch_size_{size}",
        config=spec["config"],
        common=spec["common"],
        points=zip_(axis("training.batch_size", BATCH_SIZES),
                    axis("optimizer.learning_rate", [BASE_LR * b / BASE_BATCH
                                                     for b in BATCH_SIZES])),
        seeds=spec["seeds"],
    )
