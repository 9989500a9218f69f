"""Architecture study: LeNet-5, AlexNet, VGG-11 (BN), GoogLeNet, ResNet-20 and DenseNet (CIFAR
forms) under one recipe.

Each model gets the classic recipe configs/cifar10.py gives any named model (Nesterov SGD, LR 0.1
at batch 128, cosine after 1 warmup epoch, crop + flip, weight decay 5e-4): the config string's
`model=` builds each model's own config section, which a --config.model.name override cannot.
The report's accuracy_vs_parameters.png is the plot to read.

Variants (--sweep=experiments/architectures.py:VARIANT):
  cpu   reduced for a 2-core CPU: a fixed 5,000-image subset, 2 epochs, one seed (6 runs,
        79 minutes on 2 cores: googlenet_cifar, 2.8 GFLOPs per image, takes 51 of them).
  full  all 50,000 images, 100 epochs, 3 seeds (18 runs), bf16: for a GPU.
"""

from cv_jax.analysis.sweep_definition import Sweep, axis, choose

VARIANTS = ("cpu", "full")
MODELS = ("lenet5", "alexnet_cifar", "vgg11_bn_cifar", "googlenet_cifar", "resnet20",
          "densenet_cifar")

SIZES = {
    # epochs=4: the recipe's warmup (0.23 x 4 epochs) as these results were run
    "cpu": dict(config="configs/cifar10.py:cpu,epochs=4", seeds=(0,),
                common={"dataset.max_train_examples": 5000, "training.num_epochs": 2.0}),
    "full": dict(config="configs/cifar10.py:headline", seeds=(0, 1, 2),
                 common={"training.num_epochs": 100.0}),
}


def get_sweep(arg=None):
    size = choose(arg, VARIANTS)
    spec = SIZES[size]
    return Sweep(
        name=f"architectures_{size}",
        config=spec["config"],
        common={"training.batch_size": 128, "optimizer.learning_rate": 0.1, **spec["common"]},
        points=axis("config_arg", [f"model={m}" for m in MODELS]),
        seeds=spec["seeds"],
    )
