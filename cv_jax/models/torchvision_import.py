"""Convert torchvision ImageNet weights into cv_jax variables.

    python -m cv_jax.models.torchvision_import resnet50 resnet50-0676ba61.pth --out=r50.msgpack
    python -m cv_jax.models.torchvision_import resnet50.IMAGENET1K_V2 --out=r50.msgpack

Supported: resnet18, resnet34, resnet50, vgg16, vgg16_bn, densenet121, inception_v3 (the cv_jax
models of the same names mirror torchvision's layer structure; an Inception-v3 state dict with
``AuxLogits`` converts with the auxiliary classifier, which a run without it ignores). The state
dict is a .pth file, or, given a name alone (``NAME[.WEIGHTS]``), torchvision's published weights
fetched into the cache by :mod:`cv_jax.models.pretrained`. Needs ``torch`` (``pip install -e
".[torch]"``) only to read the file.

Layout changes: conv weights OIHW -> HWIO, linear weights (out, in) -> (in, out), BatchNorm
weight/bias/running_mean/running_var -> params scale/bias and batch_stats mean/var. (cv_jax's VGG
flattens its last feature map in torchvision's (C, H, W) order, so the first classifier layer
needs no reordering.)
"""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cv_jax.models import pretrained
from cv_jax.models.registry import create_model, default_input_shape

StateDict = Mapping[str, np.ndarray]


class ImportMismatch(ValueError):
    """The state dict does not fit the cv_jax model (missing, extra or mis-shaped tensors)."""


# --- torchvision module name -> cv_jax module path, per family --------------------------------

def _resnet_path(torch_module: str) -> str:
    """``layer1.0.downsample.1`` -> ``layer1_0/downsample_bn``; ``conv1`` -> ``conv1``."""
    path = re.sub(r"^layer(\d)\.(\d+)\.", r"layer\1_\2/", torch_module)
    return path.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")


def _densenet_path(torch_module: str) -> str:
    """``features.denseblock1.denselayer2.conv1`` -> ``denseblock1/denselayer2/conv1``; the
    older names of torchvision's published weights (``denselayer2.conv.1``) too."""
    torch_module = re.sub(r"(denselayer\d+\.(?:norm|conv))\.([12])$", r"\1\2", torch_module)
    return torch_module.removeprefix("features.").replace(".", "/")


def _vgg_path(torch_module: str) -> str:
    """``features.7`` -> ``features_7``, ``classifier.0`` -> ``classifier_0`` (torchvision's
    list indices, which count the parameter-free ReLU/pool/dropout layers too)."""
    return torch_module.replace(".", "_")


def _inception_path(torch_module: str) -> str:
    """``Mixed_6b.branch7x7_2.conv`` -> ``Mixed_6b/branch7x7_2/conv`` (same names)."""
    return torch_module.replace(".", "/")


def _module_paths(name: str, state_dict: StateDict) -> dict[str, str]:
    modules = dict.fromkeys(k.rsplit(".", 1)[0] for k in state_dict)  # in state-dict order
    if name.startswith("resnet"):
        return {m: _resnet_path(m) for m in modules}
    if name.startswith("densenet"):
        return {m: _densenet_path(m) for m in modules}
    if name.startswith("inception"):
        return {m: _inception_path(m) for m in modules}
    return {m: _vgg_path(m) for m in modules}


def _model_kwargs(name: str, state_dict: StateDict) -> dict[str, Any]:
    """Fields of the cv_jax model the state dict fits: Inception-v3 with the auxiliary
    classifier when the state dict has one (torchvision's pretrained weights do)."""
    if name == "inception_v3":
        return {"aux_logits": any(k.startswith("AuxLogits.") for k in state_dict)}
    return {}


SUPPORTED = ("resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn", "densenet121",
             "inception_v3")


def check_supported(name: str) -> None:
    """Raises ValueError unless torchvision weights of model ``name`` convert."""
    if name not in SUPPORTED:
        raise ValueError(f"no torchvision import for {name!r}; supported: {', '.join(SUPPORTED)}")


def _convert_module(module: str, tensors: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """One torch module's tensors -> (params, batch_stats) leaves of the cv_jax module."""
    if "running_mean" in tensors:
        params = {"scale": tensors["weight"], "bias": tensors["bias"]}
        return params, {"mean": tensors["running_mean"], "var": tensors["running_var"]}
    weight = tensors["weight"]
    if weight.ndim == 4:
        params = {"kernel": weight.transpose(2, 3, 1, 0)}
    elif weight.ndim == 2:
        params = {"kernel": weight.T}
    else:
        raise ImportMismatch(f"tensor {module}.weight has unexpected shape {weight.shape}")
    if "bias" in tensors:
        params["bias"] = tensors["bias"]
    return params, {}


def _set(tree: dict, path: str, leaves: dict) -> None:
    *parents, last = path.split("/")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = leaves


def convert_state_dict(name: str, state_dict: StateDict) -> dict[str, Any]:
    """cv_jax variables ``{'params', 'batch_stats'}`` for model ``name`` from a torchvision state
    dict (tensors or numpy arrays). The class count is read from the classifier's shape.

    Raises :class:`ImportMismatch` naming every tensor that is missing, unexpected or of the wrong
    shape compared with ``create_model(name, num_classes=...)``.
    """
    check_supported(name)
    arrays = {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
        for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")
    }
    undefined = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
    if undefined:
        raise ValueError(
            f"the state dict has non-finite values in {', '.join(undefined)}: it cannot start a "
            "model (torchvision's vgg16 IMAGENET1K_FEATURES weights, for one, leave the "
            "classifier undefined; use IMAGENET1K_V1)")
    by_module: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        module, leaf = key.rsplit(".", 1)
        by_module.setdefault(module, {})[leaf] = value
    paths = _module_paths(name, arrays)
    params: dict = {}
    batch_stats: dict = {}
    for module, path in paths.items():
        tensors = by_module[module]
        module_params, module_stats = _convert_module(module, tensors)
        _set(params, path, module_params)
        if module_stats:
            _set(batch_stats, path, module_stats)
    variables = {"params": params, "batch_stats": batch_stats}
    classifier = next(reversed(paths.values()))
    num_classes = int(np.shape(_get(params, classifier)["kernel"])[1])
    _check_matches(name, num_classes, variables, _model_kwargs(name, arrays))
    return jax.tree.map(jnp.asarray, variables)


def _get(tree: dict, path: str) -> dict:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _flat(tree: dict) -> dict[str, tuple[int, ...]]:
    flat = flax.traverse_util.flatten_dict(tree, sep="/")
    return {k: tuple(np.shape(v)) for k, v in flat.items()}


def _check_matches(name: str, num_classes: int, variables: dict,
                   kwargs: dict[str, Any]) -> None:
    model = create_model(name, num_classes=num_classes, **kwargs)
    shape = default_input_shape(name)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    )
    problems = []
    for collection in ("params", "batch_stats"):
        want = _flat(flax.core.unfreeze(expected.get(collection, {})))
        got = _flat(variables[collection])
        problems += [f"missing {collection}/{k} {s}" for k, s in want.items() if k not in got]
        problems += [f"unexpected {collection}/{k} {s}" for k, s in got.items() if k not in want]
        problems += [
            f"{collection}/{k}: state dict gives {got[k]}, {name} needs {s}"
            for k, s in want.items()
            if k in got and got[k] != s
        ]
    if problems:
        raise ImportMismatch(
            f"the state dict does not fit cv_jax model {name!r} ({len(problems)} problems): "
            + "; ".join(problems[:10])
            + (" ..." if len(problems) > 10 else "")
            + ". Is it a torchvision state dict of the same architecture?"
        )


def import_torchvision(name: str, state_dict_path: str) -> dict[str, Any]:
    """Load a torchvision ``.pth`` state dict from disk and convert it (see
    :func:`convert_state_dict`)."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "reading .pth files needs torch: pip install -e '.[torch]'"
        ) from error
    try:
        state_dict = torch.load(state_dict_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise ValueError(
            f"cannot read state dict {state_dict_path!r} ({first_line}); expected a torchvision "
            ".pth file saved with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    return convert_state_dict(name, state_dict)


def import_pretrained(spec: str) -> dict[str, Any]:
    """Convert torchvision's published weights named by ``spec`` (``[torchvision:]NAME[.WEIGHTS]``,
    see :mod:`cv_jax.models.pretrained`), fetched into the cache on first use."""
    name, weights = pretrained.parse(spec)
    check_supported(name)
    return import_torchvision(name, pretrained.fetch(name, weights))


def save_variables(variables: dict, path: str) -> None:
    """Write variables as one flax msgpack file (read back with :func:`load_variables`)."""
    with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))


def load_variables(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


def main(argv: Sequence[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help=f"one of {', '.join(SUPPORTED)}; without a state dict, "
                                     "NAME.WEIGHTS chooses torchvision's weights (default "
                                     f"{pretrained.DEFAULT_WEIGHTS})")
    parser.add_argument("state_dict", nargs="?",
                        help="torchvision .pth state dict (default: fetch the published weights "
                             f"into {pretrained.cache_dir()})")
    parser.add_argument("--out", required=True, help="output .msgpack file")
    args = parser.parse_args(argv)
    if args.state_dict is None:
        variables = import_pretrained(args.name)
    else:
        variables = import_torchvision(args.name, args.state_dict)
    save_variables(variables, args.out)
    count = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
    print(f"wrote {args.out}: {pretrained.parse(args.name)[0]}, {count:,} parameters")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, ImportError) as error:
        sys.exit(f"error: {error}")
