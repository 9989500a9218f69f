"""PyTorch counterparts of cv_jax's ResNets and LeNet-5, for side-by-side throughput
(``cv_jax.tools.bench``, which runs ``python -m cv_jax.tools.torch_reference`` in a process of
its own).

The ImageNet ResNets are torchvision's; ``resnetN_cifar`` is torchvision's ResNet with the
CIFAR stem cv_jax uses (3x3 stride-1 conv, no max-pool); ``resnet20/32/44/56/110`` are He et
al.'s CIFAR ResNets with the parameter-free option-A shortcut, as in cv_jax.models.resnet_cifar;
``lenet5`` is cv_jax.models.lenet's. The train step is the usual eager loop (or
``torch.compile``d): SGD with Nesterov momentum and weight decay on the cross-entropy,
optionally channels_last and bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch
import torch.nn.functional as F
from torch import nn


class _CifarBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra = stride, planes - in_planes

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x
        if self.stride != 1 or self.extra:  # option A: subsample, zero-pad the new channels
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))
        return F.relu(y + shortcut)


class CifarResNet(nn.Module):
    """Depth 6n+2, stages of 16/32/64 filters (He et al. 2016, section 4.2)."""

    def __init__(self, depth: int, num_classes: int):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        blocks, in_planes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_CifarBlock(in_planes, planes, 2 if stage and i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LeNet5(nn.Module):
    """cv_jax's lenet5: unpadded 5x5 convs 6/16/120, 2x2 average pools, tanh, dense 84."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
            nn.AvgPool2d(2), nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(), nn.Linear(120, 84),
            nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.features(x)


def create_model(name: str, num_classes: int) -> nn.Module:
    """The PyTorch model matching cv_jax model ``name``; ValueError when there is none."""
    if name == "lenet5":
        return LeNet5(num_classes)
    import torchvision

    match = re.fullmatch(r"resnet(\d+)(_cifar)?", name)
    if match and int(match[1]) in (18, 34, 50, 101, 152):
        model = getattr(torchvision.models, f"resnet{match[1]}")(num_classes=num_classes)
        if match[2]:
            model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        return model
    if match and not match[2] and int(match[1]) in (20, 32, 44, 56, 110):
        return CifarResNet(int(match[1]), num_classes)
    raise ValueError(f"no PyTorch reference for model {name!r}: use resnet18/34/50/101/152, "
                     "their _cifar variants, resnet20/32/44/56/110 or lenet5")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def time_train_step(name: str, batch_size: int, image_shape: tuple[int, int, int], *,
                    num_classes: int = 10, bf16: bool = False, channels_last: bool = True,
                    compile: bool = False, steps: int = 20, warmup: int = 3) -> dict:
    """Seconds per SGD step of model ``name`` on synthetic data (``steps`` steps timed with
    one synchronisation at the end, after ``warmup`` untimed ones), its parameter count and
    the peak CUDA memory (None on CPU)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = create_model(name, num_classes).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    height, width, channels = image_shape
    images = torch.randn(batch_size, channels, height, width, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    run = torch.compile(step) if compile else step

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for _ in range(warmup):
        run()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"seconds": seconds, "parameters": parameter_count(model),
            "peak_bytes": peak, "device": torch.cuda.get_device_name() if peak is not None
            else f"cpu ({torch.get_num_threads()} threads)", "version": torch.__version__}


def main(argv: list[str] | None = None) -> None:
    """Times one model's step and writes the result to ``--json``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--image", default="32,32,3", help="height,width,channels")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    result = time_train_step(args.model, args.batch_size,
                             tuple(int(x) for x in args.image.split(",")), bf16=args.bf16,
                             channels_last=args.channels_last, compile=args.compile,
                             steps=args.steps, warmup=args.warmup)
    with open(args.json, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
