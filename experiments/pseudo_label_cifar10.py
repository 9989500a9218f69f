"""Pseudo-labelling with 4,000 CIFAR-10 labels vs supervised-only.

The recipe `make train` runs (configs/cifar10.py: `headline` on a GPU/TPU, `cpu` on a CPU) at
batch 256 (learning rate scaled with it) and 40 epochs, since 4,000 examples make short epochs;
seed 0. 4,000 of the 50,000 training images (400 per class) keep their labels. Round 0 trains
on them alone (the supervised-only baseline); 3 rounds then add the predictions of the previous
round's model on the other 46,000 images with confidence >= 0.95 and retrain from scratch.
Label smoothing is off: the recipe's 0.2 would cap a model's confidence near 0.82, below the
threshold. Later rounds train on more examples, so for the same 40 epochs on more steps: meant
for a GPU.

    make pseudo-label CONFIG=experiments/pseudo_label_cifar10.py
    (writes runs/pseudo-label/pseudo_label_cifar10/)

On a CPU, give every round the same number of steps instead, and fewer rounds (400 steps of
256 are 26 epochs of the 4,000 labels; about 6 minutes a round with the cpu recipe on 2 cores):

    make pseudo-label CONFIG=experiments/pseudo_label_cifar10.py:cpu,steps=400 ROUNDS=2
"""

import ml_collections as mlc

from cv_jax.workflows.multirun import recipe_config


def get_config(arg=None):
    config = recipe_config(f"batch_size=256,epochs=40,{arg or ''}")
    config.dataset.num_labelled = 4000
    config.loss.label_smoothing = 0.0
    config.pseudo_label = mlc.ConfigDict(dict(rounds=3, threshold=0.95, top_k=0))
    return config
