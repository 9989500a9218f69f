"""Pre-activation ResNet-18 for CIFAR ("preact_resnet18"): He, Zhang, Ren & Sun 2016, "Identity
Mappings in Deep Residual Networks" (arXiv:1603.05027), as used by the mixup paper (Zhang, Cisse,
Dauphin & Lopez-Paz 2018, "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412).

It is ResNet-18's layout adapted to CIFAR as in kuangliu/pytorch-cifar: a 3x3 stride-1 stem and
four stages of two blocks with 64/128/256/512 features on 32/16/8/4 pixel maps (the paper's
CIFAR nets have three stages of 16/32/64 features), with He et al.'s pre-activation blocks
BN-ReLU-conv3x3-BN-ReLU-conv3x3. We follow the code the mixup paper's CIFAR results came from,
facebookresearch/mixup-cifar10 ``models/resnet.py`` (its ``ResNet18`` is
``ResNet(PreActBlock, [2,2,2,2])``, 11,171,274 parameters at 10 classes), which differs from the
paper in three ways:

- the stem is conv3x3-BN-ReLU (``stem_bn=True``), where the paper has a bare conv;
- an identity shortcut carries ``relu(bn1(x))``, the block's pre-activated input, instead of
  ``x`` (``preact_shortcut=True``); projection shortcuts (1x1 conv, no BN) take it in both;
- there is no BN-ReLU after the last block (the paper adds one before pooling).

``stem_bn=False, preact_shortcut=False`` gives kuangliu/pytorch-cifar's ``PreActResNet18``
(``models/preact_resnet.py``, 11,171,146 parameters), which still has no final BN-ReLU.
Weights start with PyTorch's default init, as in both references (neither re-initialises).

:class:`PreActBlock` is also the block of the wide ResNets (``wide_resnet.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import PLAIN, Dropout, LayerImpl, global_avg_pool, torch_default_init
from cv_jax.models.registry import partial_module, register
from cv_jax.models.resnet import conv, dense


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the shortcut; no ReLU after the add.

    The shortcut is a 1x1 conv of the pre-activated input where the shape changes, else the
    input itself (or, with ``preact_shortcut``, its pre-activation ``relu(bn1(x))``).
    """

    features: int
    strides: int = 1
    dropout: float = 0.0  # between the two convs (wide ResNets)
    preact_shortcut: bool = False
    kernel_init: Any = torch_default_init
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(self.layer_impl.batch_norm, train, dtype=self.dtype)
        conv_ = functools.partial(conv, layer_impl=self.layer_impl, dtype=self.dtype,
                                  kernel_init=self.kernel_init)
        out = nn.relu(norm(name="bn1")(x))
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv_(self.features, 1, self.strides, name="shortcut_conv")(out)
        else:
            shortcut = out if self.preact_shortcut else x
        y = conv_(self.features, 3, self.strides, 1, name="conv1")(out)
        y = nn.relu(norm(name="bn2")(y))
        y = Dropout(self.dropout, deterministic=not train)(y)
        y = conv_(self.features, 3, 1, 1, name="conv2")(y)
        return y + shortcut.astype(y.dtype)


class PreActResNet(nn.Module):
    """Pre-activation ResNet: 3x3 stem, stages of ``stage_sizes`` blocks with ``width * 2**stage``
    features (later stages start with stride 2), global average pooling, ``fc``.

    Submodules: ``conv1``, ``bn1`` (with ``stem_bn``), ``layer{i}_{j}/{bn1, conv1, bn2, conv2,
    shortcut_conv}``, ``fc`` (the references' ``layer{i}.{j}.shortcut.0`` and ``linear``).
    """

    num_classes: int = 10
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    width: int = 64
    stem_bn: bool = True
    preact_shortcut: bool = True
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(
            self.width, 3, 1, 1, layer_impl=self.layer_impl, dtype=self.dtype,
            kernel_init=torch_default_init, name="conv1",
        )(x)
        if self.stem_bn:
            x = nn.relu(self.layer_impl.batch_norm(train, dtype=self.dtype, name="bn1")(x))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = PreActBlock(
                    self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    preact_shortcut=self.preact_shortcut,
                    dtype=self.dtype,
                    layer_impl=self.layer_impl,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        x = global_avg_pool(x)
        x = dense(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


register("preact_resnet18")(partial_module(PreActResNet, stage_sizes=(2, 2, 2, 2)))
