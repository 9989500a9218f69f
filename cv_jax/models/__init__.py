"""The model zoo: the registry (:mod:`cv_jax.models.registry`) and the model families, each
registering its models when imported here.

A model is added by writing one module that registers a factory with
:func:`~cv_jax.models.registry.register` and importing that module below. The training loop only
uses :func:`create_model`, :func:`model_names` and :func:`data_dependent_init`.

Every registered model is a ``flax.linen.Module`` called as ``model.apply(variables, x, train=...)``
with ``x`` float NHWC (already normalised); it returns float32 logits ``[B, num_classes]``. Its
field ``layer_impl`` (:class:`cv_jax.models.layers.LayerImpl`) chooses how its convolutions,
BatchNorms and max pools compute.
"""

from cv_jax.models import (  # noqa: F401  (each family registers its models)
    airbench,
    alexnet,
    convnet,
    densenet,
    googlenet,
    inception,
    lenet,
    preact_resnet,
    resnet,
    resnet_cifar,
    vgg,
    wide_resnet,
)
from cv_jax.models.registry import (
    create_model,
    data_dependent_init,
    default_input_shape,
    input_size_advice,
    model_fields,
    model_names,
    partial_module,
    register,
)

__all__ = [
    "create_model",
    "data_dependent_init",
    "default_input_shape",
    "input_size_advice",
    "model_fields",
    "model_names",
    "partial_module",
    "register",
]
