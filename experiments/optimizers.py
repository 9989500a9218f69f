"""Optimizer study: SGD, SGD + momentum, Nesterov, Adagrad, Adadelta, RMSprop, Adam and AdamW.

ResNet-20 with the classic recipe of configs/cifar10.py (cosine LR after 1 warmup epoch, 4-pixel
crop + flip, weight decay 5e-4 as L2 in the gradient, decoupled for AdamW), batch 128. Each
optimizer runs at the learning rate its LR range test suggests (cv_jax.analysis.lr_points: one
`python -m cv_jax.workflows.lr_find` per optimizer, 100 steps from 1e-7 to 10, before its runs),
or, in
the `cpu` variant, at a learning rate usual for it (in OPTIMIZERS).

Variants (--sweep=experiments/optimizers.py:VARIANT):
  cpu          reduced for a 2-core CPU: a fixed 10,000-image subset of CIFAR-10 train,
               2 epochs, one seed (8 runs), usual learning rates.
  cpu_lr_find  the same at the range tests' learning rates (8 tests of 2-7 minutes, 8 runs).
  full         all 50,000 images, 50 epochs, 3 seeds (24 runs), bf16, range-test learning
               rates: for a GPU.
"""

from cv_jax.analysis.lr_points import LRFind
from cv_jax.analysis.sweep_definition import Point, Sweep, choose

VARIANTS = ("cpu", "cpu_lr_find", "full")

OPTIMIZERS = {
    "sgd": {"optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.nesterov": False,
            "optimizer.learning_rate": 0.1},
    "momentum": {"optimizer.name": "sgd", "optimizer.momentum": 0.9,
                 "optimizer.nesterov": False, "optimizer.learning_rate": 0.1},
    "nesterov": {"optimizer.name": "sgd", "optimizer.momentum": 0.9, "optimizer.nesterov": True,
                 "optimizer.learning_rate": 0.1},
    "adagrad": {"optimizer.name": "adagrad", "optimizer.learning_rate": 0.05},
    # Zeiler (2012): rho 0.95, eps 1e-6; the learning rate scales the update (1.0 = the paper).
    "adadelta": {"optimizer.name": "adadelta", "optimizer.learning_rate": 1.0,
                 "optimizer.rho": 0.95, "optimizer.eps": 1e-6},
    "rmsprop": {"optimizer.name": "rmsprop", "optimizer.momentum": 0.0,
                "optimizer.nesterov": False, "optimizer.learning_rate": 1e-3},
    "adam": {"optimizer.name": "adam", "optimizer.learning_rate": 1e-3},
    "adamw": {"optimizer.name": "adamw", "optimizer.learning_rate": 1e-3,
              "optimizer.weight_decay": 0.05},
}

SIZES = {
    "cpu": dict(config="configs/cifar10.py:cpu,model=resnet20", seeds=(0,), lr_find=False,
                common={"dataset.max_train_examples": 10000, "training.num_epochs": 2.0}),
    "cpu_lr_find": dict(config="configs/cifar10.py:cpu,model=resnet20", seeds=(0,),
                        lr_find=True, common={"dataset.max_train_examples": 10000,
                                              "training.num_epochs": 2.0}),
    "full": dict(config="configs/cifar10.py:headline,model=resnet20", seeds=(0, 1, 2),
                 lr_find=True,
                 common={"training.num_epochs": 50.0}),
}


def with_lr_find(overrides: dict) -> dict:
    """``overrides`` with the learning rate left to the point's LR range test."""
    return {**overrides, "optimizer.learning_rate": LRFind()}


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    spec = SIZES[size]
    return Sweep(
        name=f"optimizers_{size}",
        config=spec["config"],
        common={"training.batch_size": 128, **spec["common"]},
        points=[Point(with_lr_find(overrides) if spec["lr_find"] else overrides, name=name)
                for name, overrides in OPTIMIZERS.items()],
        seeds=spec["seeds"],
    )
