"""Ablation of batch norm and dropout (and the usual regularisers) on the configurable ConvNet.

A VGG-style ConvNet (configs/cifar10.py, model=convnet: 3 x [conv-conv-maxpool-dropout 0.25],
32/64/128 filters, a 256-wide FC layer with dropout 0.5, batch norm) under the classic recipe
(Nesterov SGD, LR 0.1 at batch 128, cosine after 1 warmup epoch, crop + flip, weight decay
5e-4), plus label smoothing 0.1. Removed one at a time: batch norm, dropout (conv and FC),
crop + flip augmentation, weight decay, label smoothing, the LR warmup. 3 seeds each. Without
batch norm, LR 0.1 may diverge: the report then lists those runs as failed, with the error.

Variants (--sweep=experiments/ablation_convnet.py:VARIANT):
  cpu   reduced for a 2-core CPU: a fixed 10,000-image subset, 3 epochs (21 runs).
  full  all 50,000 images, 60 epochs, bf16 (21 runs): for a GPU.
"""

from cv_jax.analysis.sweep_definition import ablation, choose

VARIANTS = ("cpu", "full")
BLOCK = "conv:{0},conv:{0},pool:max:2"
LAYERS = ",".join(BLOCK.format(f) + ",dropout:0.25" for f in (32, 64, 128))
LAYERS_WITHOUT_DROPOUT = ",".join(BLOCK.format(f) for f in (32, 64, 128))

INGREDIENTS = {
    "batch norm": {"model.batch_norm": False},
    "dropout": {"model.layers": LAYERS_WITHOUT_DROPOUT, "model.fc_dropout": 0.0},
    "crop + flip augmentation": {"augment.crop_padding": 0, "augment.flip": False},
    "weight decay": {"optimizer.weight_decay": 0.0},
    "label smoothing": {"loss.label_smoothing": 0.0},
    "LR warmup": {"schedule.warmup_epochs": 0.0},
}

SIZES = {
    "cpu": dict(config="configs/cifar10.py:cpu,model=convnet",
                common={"dataset.max_train_examples": 10000, "training.num_epochs": 3.0}),
    "full": dict(config="configs/cifar10.py:headline,model=convnet",
                 common={"training.num_epochs": 60.0}),
}


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    spec = SIZES[size]
    common = {"model.layers": LAYERS, "model.fc": "256", "model.fc_dropout": 0.5,
              "loss.label_smoothing": 0.1, "training.batch_size": 128,
              "optimizer.learning_rate": 0.1, **spec["common"]}
    return ablation(f"ablation_convnet_{size}", spec["config"], INGREDIENTS, common=common)
