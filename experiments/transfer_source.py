"""The source run of the transfer study: the cpu recipe on CIFAR-10 classes 0-4 only.

cpu size: airbench (widths 32/64/64), the 25,000 training images of airplane, automobile,
bird, cat and deer, 1.6 epochs; tested on their 2,500 test images. Then
experiments/transfer.py moves it to classes 5-9. Both run with `make transfer-study`.
"""

from cv_jax.analysis.sweep_definition import Point, Sweep, choose

VARIANTS = ("cpu", "full")
EPOCHS = {"cpu": 1.6, "full": 10.0}

# The cpu recipe pinned to its 1.6-epoch schedule (warmup 0.368 epochs), as the results were run.
CONFIGS = {"cpu": "configs/cifar10.py:cpu,epochs=1.6", "full": "configs/cifar10.py:headline"}

def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    return Sweep(
        name=f"transfer_source_{size}",
        config=CONFIGS[size],
        points=[Point({"dataset.classes": "0-4"}, name="classes_0-4")],
        common={"training.num_epochs": EPOCHS[size]},
    )
