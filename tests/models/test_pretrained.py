"""torchvision weights by name: URLs from torchvision's weights enums, one download into the
cache, the SHA-256 check, the offline and no-torch errors. Nothing is fetched from the network:
a state dict saved here is served from a file:// URL in place of the published one."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
import sys

import jax
import numpy as np
import pytest

from cv_jax.models import pretrained
from cv_jax.models.pretrained import PretrainedError
from cv_jax.models.torchvision_import import (
    SUPPORTED,
    convert_state_dict,
    import_pretrained,
    load_variables,
    main,
)

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cv_jax[torch]')")
torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")

PUBLISHED = "https://download.pytorch.org/models/"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass
class Served:
    file: pathlib.Path  # served at file.as_uri()
    state_dict: dict
    asked: list  # the (name, weights) whose URL was asked for


@pytest.fixture
def served(tmp_path, monkeypatch) -> Served:
    """A resnet18 state dict published at a file:// URL whose name carries its SHA-256 prefix,
    as torchvision's do; ``weights_url`` resolves every name to it, and the cache folder is
    ``tmp_path/cache/torchvision``."""
    torch.manual_seed(0)
    state_dict = torchvision.models.resnet18(num_classes=5).state_dict()
    staged = tmp_path / "server" / "staged.pth"
    staged.parent.mkdir()
    torch.save(state_dict, staged)
    served = Served(staged.rename(staged.with_name(f"resnet18-{sha256(staged)[:8]}.pth")),
                    state_dict, [])

    def weights_url(name, weights=pretrained.DEFAULT_WEIGHTS):
        served.asked.append((name, weights))
        return served.file.as_uri()

    monkeypatch.setattr(pretrained, "weights_url", weights_url)
    monkeypatch.setenv("CV_JAX_CACHE", str(tmp_path / "cache"))
    return served


def test_specs_and_urls_come_from_torchvisions_weights_enums() -> None:
    assert pretrained.parse("torchvision:resnet50") == ("resnet50", "IMAGENET1K_V1")
    assert pretrained.parse("torchvision:resnet50.IMAGENET1K_V2") == ("resnet50", "IMAGENET1K_V2")
    assert pretrained.parse("resnet18") == ("resnet18", "IMAGENET1K_V1")
    assert pretrained.is_spec("torchvision:vgg16") and not pretrained.is_spec("runs/vgg16")
    assert pretrained.weights_url("resnet50") == PUBLISHED + "resnet50-0676ba61.pth"
    assert (pretrained.weights_url("resnet50", "IMAGENET1K_V2")
            == PUBLISHED + "resnet50-11ad3fa6.pth")
    assert (pretrained.weights_url("inception_v3")
            == PUBLISHED + "inception_v3_google-0cc3c7bd.pth")
    for name in SUPPORTED:  # every supported model has default weights, with a hash in the name
        assert re.fullmatch(re.escape(PUBLISHED) + r"[a-z0-9_]+-[0-9a-f]{8}\.pth",
                            pretrained.weights_url(name)), name
    with pytest.raises(PretrainedError, match=re.escape(
            "torchvision has no weights 'IMAGENET1K_V3' for resnet50; choose one of "
            "IMAGENET1K_V1, IMAGENET1K_V2")):
        pretrained.weights_url("resnet50", "IMAGENET1K_V3")


def test_weights_are_downloaded_once_into_the_cache(served, tmp_path) -> None:
    file, asked = served.file, served.asked
    path = pretrained.fetch("resnet18")
    assert path == str(tmp_path / "cache" / "torchvision" / file.name)
    assert open(path, "rb").read() == file.read_bytes()
    assert asked == [("resnet18", "IMAGENET1K_V1")]
    file.unlink()  # a second download would now fail
    assert pretrained.fetch("resnet18", "IMAGENET1K_V2") == path
    assert asked[-1] == ("resnet18", "IMAGENET1K_V2")


def test_a_damaged_cached_file_names_the_file_and_the_expected_hash(served, tmp_path) -> None:
    file = served.file
    path = tmp_path / "cache" / "torchvision" / file.name
    path.parent.mkdir(parents=True)
    path.write_bytes(file.read_bytes()[:-1])
    expected = file.name.split("-")[1].removesuffix(".pth")
    with pytest.raises(PretrainedError, match=re.escape(
            f"{path} is damaged or not the published file: its SHA-256 is {sha256(path)}, its "
            f"name says {expected}...; delete it to download {file.as_uri()} again")):
        pretrained.fetch("resnet18")


def test_a_download_that_does_not_match_its_hash_is_not_kept(served, tmp_path) -> None:
    wrong = served.file = served.file.rename(served.file.with_name("resnet18-00000000.pth"))
    with pytest.raises(PretrainedError, match=re.escape(
            f"the file downloaded from {wrong.as_uri()} is not the published one (invalid hash "
            f'value (expected "00000000", got "{sha256(wrong)}")); nothing was saved; try again')):
        pretrained.fetch("resnet18")
    assert list((tmp_path / "cache" / "torchvision").iterdir()) == []


def test_offline_the_error_names_the_url_and_where_to_put_the_file(served, tmp_path) -> None:
    file = served.file
    file.unlink()
    path = tmp_path / "cache" / "torchvision" / file.name
    with pytest.raises(PretrainedError, match=re.escape(f"cannot download {file.as_uri()} (")
                       + ".*" + re.escape(
                           f"). Without network access, download it on another machine and put "
                           f"it at {path} (set $CV_JAX_CACHE to use another cache folder)")):
        pretrained.fetch("resnet18")


def test_without_torch_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match=re.escape(
            "torchvision weights by name need torch and torchvision: "
            "pip install 'cv_jax[torch]'")):
        pretrained.fetch("resnet18")


def test_import_by_name_and_the_cli_convert_the_fetched_weights(served, tmp_path,
                                                                 capsys) -> None:
    expected = convert_state_dict("resnet18", served.state_dict)
    variables = import_pretrained("torchvision:resnet18")
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
    out = tmp_path / "r18.msgpack"
    main(["resnet18.IMAGENET1K_V2", f"--out={out}"])
    assert capsys.readouterr().out == f"wrote {out}: resnet18, 11,179,077 parameters\n"
    jax.tree.map(np.testing.assert_array_equal, load_variables(str(out)), expected)
    assert served.asked == [("resnet18", "IMAGENET1K_V1"), ("resnet18", "IMAGENET1K_V2")]
    with pytest.raises(ValueError, match="no torchvision import for 'alexnet'; supported: "):
        import_pretrained("torchvision:alexnet")
