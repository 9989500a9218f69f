"""torchvision's published ImageNet weights by name, fetched once into cv_jax's cache folder.

``torchvision:NAME`` or ``torchvision:NAME.WEIGHTS`` (``torchvision:resnet50.IMAGENET1K_V2``)
names the file of one of torchvision's weights enums (``IMAGENET1K_V1`` when WEIGHTS is left
out); its URL comes from torchvision itself (``torchvision.models.get_model_weights``). torch.hub
downloads it into ``$CV_JAX_CACHE/torchvision`` (default ``~/.cache/cv_jax/torchvision``) and
checks its SHA-256 against the prefix in its file name (``resnet50-0676ba61.pth``); a file
already there is checked the same way and used without downloading. Offline, put the file there
by hand. torch and torchvision (``pip install 'cv_jax[torch]'``) are imported only here, when
weights are fetched.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from types import ModuleType

from cv_jax.runtime.paths import CACHE_ENV, default_cache_dir, file_sha256

log = logging.getLogger(__name__)

PREFIX = "torchvision:"
DEFAULT_WEIGHTS = "IMAGENET1K_V1"
CACHE_SUBDIR = "torchvision"


class PretrainedError(ValueError):
    """Weights that cannot be resolved, downloaded or verified."""


def is_spec(value: str) -> bool:
    """Whether ``value`` names torchvision weights (``torchvision:NAME[.WEIGHTS]``)."""
    return value.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str]:
    """``'torchvision:resnet50.IMAGENET1K_V2'`` (the prefix is optional) -> ``('resnet50',
    'IMAGENET1K_V2')``; the weights default to ``IMAGENET1K_V1``."""
    name, _, weights = spec.removeprefix(PREFIX).partition(".")
    return name, weights or DEFAULT_WEIGHTS


def cache_dir() -> str:
    """Where fetched weights are kept: ``$CV_JAX_CACHE/torchvision`` or
    ``~/.cache/cv_jax/torchvision``."""
    return os.path.join(default_cache_dir(), CACHE_SUBDIR)


def _torch() -> tuple[ModuleType, ModuleType]:
    """``(torch.hub, torchvision.models)``, or an ImportError naming the extra."""
    try:
        import torch.hub
        import torchvision.models
    except ImportError as error:
        raise ImportError("torchvision weights by name need torch and torchvision: "
                          "pip install 'cv_jax[torch]'") from error
    return torch.hub, torchvision.models


def weights_url(name: str, weights: str = DEFAULT_WEIGHTS) -> str:
    """The URL of torchvision's ``weights`` for model ``name`` (from its weights enum)."""
    _, models = _torch()
    try:
        enum = models.get_model_weights(name)
    except ValueError:
        raise PretrainedError(f"torchvision has no model {name!r}") from None
    try:
        return enum[weights].url
    except KeyError:
        raise PretrainedError(f"torchvision has no weights {weights!r} for {name}; choose one "
                              f"of {', '.join(w.name for w in enum)}") from None


def fetch(name: str, weights: str = DEFAULT_WEIGHTS, directory: str | None = None) -> str:
    """The local path of torchvision's ``weights`` for ``name``: downloaded into ``directory``
    (default :func:`cache_dir`) on first use, checked against the SHA-256 prefix in the file
    name every time.

    Raises :class:`PretrainedError` for unknown weights, a file whose hash does not match
    (naming it and the expected hash) or a failed download (naming the URL and the path to put
    the file at by hand); ImportError without torch.
    """
    hub, _ = _torch()
    url = weights_url(name, weights)
    directory = directory or cache_dir()
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    path = os.path.join(directory, filename)
    match = hub.HASH_REGEX.search(filename)  # torchvision's names all carry one
    expected = match.group(1) if match else ""
    if os.path.exists(path):
        digest = file_sha256(path)
        if not digest.startswith(expected):
            raise PretrainedError(
                f"{path} is damaged or not the published file: its SHA-256 is {digest}, its "
                f"name says {expected}...; delete it to download {url} again")
        return path
    os.makedirs(directory, exist_ok=True)
    log.info("downloading %s to %s", url, path)
    try:
        hub.download_url_to_file(url, path, hash_prefix=expected)
    except RuntimeError as error:  # torch.hub's hash check; nothing is left at `path`
        raise PretrainedError(f"the file downloaded from {url} is not the published one "
                              f"({error}); nothing was saved; try again") from None
    except OSError as error:  # urllib's URLError included
        raise PretrainedError(
            f"cannot download {url} ({error}). Without network access, download it on another "
            f"machine and put it at {path} (set ${CACHE_ENV} to use another cache folder)"
        ) from None
    return path
