"""Learning-rate schedule study: constant, step (multistep), exponential, cosine, one-cycle.

ResNet-20, Nesterov SGD at peak LR 0.1, batch 128, the classic recipe of configs/cifar10.py
otherwise (1 warmup epoch, crop + flip, weight decay 5e-4). The schedules, over E epochs:
  constant     0.1 throughout (after the warmup)
  step         x0.1 at E/2 and again at 3E/4 (He et al. 2016's shape)
  exponential  x(0.01^(1/E)) per epoch, smoothly: ends at 1% of the peak
  cosine       cosine to 0
  one_cycle    linear up from 4% of the peak over 0.3 E, then linear down to 0
`python -m cv_jax.tools.schedules --config=... --out=lr.png` plots one; the report's lr.png shows
all.

Variants (--sweep=experiments/schedules.py:VARIANT):
  cpu   reduced for a 2-core CPU: a fixed 10,000-image subset, 4 epochs, one seed (5 runs).
  full  all 50,000 images, 60 epochs, 3 seeds (15 runs), bf16: for a GPU.
"""

from cv_jax.analysis.sweep_definition import Point, Sweep, choose

VARIANTS = ("cpu", "full")

SIZES = {
    "cpu": dict(config="configs/cifar10.py:cpu,model=resnet20", epochs=4.0, seeds=(0,),
                common={"dataset.max_train_examples": 10000}),
    "full": dict(config="configs/cifar10.py:headline,model=resnet20", epochs=60.0,
                 seeds=(0, 1, 2), common={}),
}


def schedules(epochs: float) -> dict[str, dict]:
    """Each schedule's overrides for a run of ``epochs``."""
    return {
        "constant": {"schedule.name": "constant"},
        "step": {"schedule.name": "multistep", "schedule.boundaries": (epochs / 2, epochs * 3 / 4),
                 "schedule.decay_factor": 0.1},
        "exponential": {"schedule.name": "exponential",
                        "schedule.decay_factor": 0.01 ** (1 / epochs)},
        "cosine": {"schedule.name": "cosine", "schedule.end_factor": 0.0},
        "one_cycle": {"schedule.name": "linear", "schedule.warmup_epochs": 0.3 * epochs,
                      "schedule.warmup_init_factor": 0.04, "schedule.end_factor": 0.0},
    }


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    spec = SIZES[size]
    return Sweep(
        name=f"schedules_{size}",
        config=spec["config"],
        common={"training.batch_size": 128, "optimizer.learning_rate": 0.1,
                "training.num_epochs": spec["epochs"], **spec["common"]},
        points=[Point(o, name=name) for name, o in schedules(spec["epochs"]).items()],
        seeds=spec["seeds"],
    )
