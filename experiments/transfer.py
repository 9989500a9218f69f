"""Transfer study: from classes 0-4 (experiments/transfer_source.py) to classes 5-9 with 10%
of their labels, trained from scratch or started from the source's backbone as a linear
probe, fine-tuned, or with discriminative learning rates (backbone x 0.1).

cpu size: the cpu recipe (airbench 32/64/64) on a class-balanced 2,500 of the 25,000
training images of dog, frog, horse, ship and truck (`dataset.num_labelled`), 8 epochs
(72 steps of 256), evaluated on their 2,500 test images; 1 seed.

    make transfer-study            # the source run, these four runs, the report
"""

from cv_jax.analysis.sweep_definition import Point, Sweep, choose

VARIANTS = ("cpu", "full")

SOURCE = "runs/sweeps/transfer_source_{size}/classes_0-4"
TARGET = {"dataset.classes": "5-9", "dataset.num_labelled": 2500,
          "training.eval_every_epochs": 2.0, "transfer.checkpoint": "latest"}
EPOCHS = {"cpu": 8.0, "full": 30.0}

# The cpu recipe pinned to its 1.6-epoch schedule (warmup 0.368 epochs), as the results were run.
CONFIGS = {"cpu": "configs/cifar10.py:cpu,epochs=1.6", "full": "configs/cifar10.py:headline"}

def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    source = SOURCE.format(size=size)
    modes = [Point({}, name="scratch", label="from scratch")] + [
        Point({"transfer.init_from": source, "transfer.mode": mode}, name=mode)
        for mode in ("linear_probe", "finetune", "discriminative")]
    return Sweep(
        name=f"transfer_{size}",
        config=CONFIGS[size],
        points=modes,
        common={**TARGET, "training.num_epochs": EPOCHS[size]},
        description=f"Classes 5-9 with 2,500 labels; backbone from {source} (classes 0-4).",
    )
