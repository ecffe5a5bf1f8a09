"""Native models in the registry: `models import`, load(), list/check, thresholds.

The checkpoint is a seeded random reference IResNet (tests/torch_reference/nets.py) with the real
arcface_torch key names; parity of the port itself is tests/test_nets_iresnet.py's job, here
the registry must give the same embedding as torch for what it imported.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
from torch_reference.nets import IResNet as TorchIResNet  # noqa: E402
from torch_reference.nets import randomise_  # noqa: E402

from jaxcloak.cli.main import main  # noqa: E402
from jaxcloak.convert.torch import ConversionError  # noqa: E402
from jaxcloak.nets import iresnet  # noqa: E402
from jaxcloak.zoo import registry  # noqa: E402


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCLOAK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _torch_tiny(seed: int = 0) -> torch.nn.Module:
    cfg = iresnet.VARIANTS["tiny"]
    torch.manual_seed(seed)
    net = TorchIResNet(
        layers=cfg.layers, widths=cfg.widths, num_features=cfg.num_features, input_size=112
    )
    return randomise_(net, seed=seed + 1)


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    net = _torch_tiny()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(net.state_dict(), path)
    return path, net


def _faces(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((n, 112, 112, 3), dtype=np.float32)


def test_import_then_load_matches_torch(tiny_pth, home):
    path, net = tiny_pth
    name, stored = registry.import_checkpoint(path, "iresnet", variant="tiny", name="mine")
    assert name == "mine" and stored.is_file() and stored.is_relative_to(home)
    meta = json.loads(stored.with_suffix(".json").read_text())
    assert (meta["arch"], meta["variant"], meta["threshold"]) == ("iresnet", "tiny", None)
    model = registry.load("mine")
    assert model.spec.native and model.spec.embedding_dim == 128 and model.from_cache
    x = _faces()
    ours = np.asarray(jax.jit(model.embed)(model.params, x))
    with torch.no_grad():
        ref = net(torch.from_numpy((x * 255 - 127.5) / 127.5).permute(0, 3, 1, 2)).numpy()
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    assert np.sum(ours * ref, axis=-1).min() >= 0.99999
    with pytest.raises(ValueError, match="no published same-person threshold"):
        model.spec.require_threshold()


def test_import_records_threshold_and_refuses_to_clobber(tiny_pth):
    path, _ = tiny_pth
    registry.import_checkpoint(path, "iresnet", variant="tiny", name="t", threshold=0.3)
    assert registry.load("t").spec.require_threshold() == 0.3
    with pytest.raises(FileExistsError, match="--force"):
        registry.import_checkpoint(path, "iresnet", variant="tiny", name="t")
    registry.import_checkpoint(path, "iresnet", variant="tiny", name="t", overwrite=True)
    assert registry.load("t").spec.threshold is None


def test_bad_checkpoint_names_the_key_and_stores_nothing(tiny_pth, tmp_path, home):
    _, net = tiny_pth
    sd = {k: v for k, v in net.state_dict().items() if k != "layer3.0.bn2.running_mean"}
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(ConversionError, match=r"layer3\.0\.bn2\.running_mean"):
        registry.import_checkpoint(bad, "iresnet", variant="tiny", name="bad")
    assert not (home / "models" / "imported" / "bad.npz").exists()
    # The CLI says the same and exits 1.
    assert main(["models", "import", str(bad), "--arch", "iresnet", "--variant", "tiny"]) == 1


def test_dataparallel_prefix_is_dropped(tiny_pth, tmp_path):
    _, net = tiny_pth
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    name, _ = registry.import_checkpoint(path, "iresnet", variant="tiny")
    assert name == "iresnet-tiny"
    registry.load(name)


def test_registered_name_fixes_arch_and_variant(tiny_pth):
    path, _ = tiny_pth
    # A tiny checkpoint is not an r18: refused with the offending keys named.
    with pytest.raises(ConversionError, match=r"conv1\.weight"):
        registry.import_checkpoint(path, "arcface-r18")
    with pytest.raises(ConversionError, match="variant"):
        registry.import_checkpoint(path, "arcface-r18", variant="tiny")
    with pytest.raises(ConversionError, match="ONNX"):
        registry.import_checkpoint(path, "sface")
    with pytest.raises(ConversionError, match="unknown architecture"):
        registry.import_checkpoint(path, "resnet9000", variant="x")
    with pytest.raises(ConversionError, match="registered as irse"):
        registry.import_checkpoint(path, "iresnet", variant="tiny", name="ir152")


def test_unimported_native_model_says_how_to_import():
    with pytest.raises(FileNotFoundError, match="models import CHECKPOINT --arch irse50"):
        registry.load("irse50")
    with pytest.raises(KeyError, match="unknown face model"):
        registry.load("nope")


def test_cli_import_list_check(tiny_pth, capsys):
    path, _ = tiny_pth
    args = ["models", "import", str(path), "--arch", "iresnet", "--variant", "tiny"]
    assert main([*args, "--name", "cli-tiny"]) == 0
    assert "every key matched" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "cli-tiny" in out and "iresnet/tiny" in out and "not imported" in out
    assert main(["models", "check", "--model", "cli-tiny"]) == 0
    assert "ok (native" in capsys.readouterr().out
    # Asking to check a native model that was never imported is a failure.
    assert main(["models", "check", "--model", "irse50"]) == 1


def test_facenet_import_resizes_aligned_faces_to_160(tmp_path):
    """A custom-named FaceNet import takes 112 faces and resizes them like torch's bilinear."""
    from torch_reference.facenet import InceptionResnetV1

    from jaxcloak.nets import facenet

    cfg = facenet.VARIANTS["tiny"]
    torch.manual_seed(0)
    net = InceptionResnetV1(repeats=cfg.repeats, num_classes=cfg.num_classes)
    for m in net.modules():  # He init so the random net does not wash its input out
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    net = randomise_(net, seed=1)
    path = tmp_path / "fn.pth"
    torch.save(net.state_dict(), path)
    registry.import_checkpoint(path, "facenet", variant="tiny", name="fn-tiny")
    model = registry.load("fn-tiny")
    assert model.spec.network_size == 160 and model.spec.input_size == (112, 112)
    x = _faces()
    ours = np.asarray(jax.jit(model.embed)(model.params, x))
    with torch.no_grad():
        up = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            size=(160, 160),
            mode="bilinear",
            align_corners=False,
        )
        ref = net((up * 255 - 127.5) / 128).numpy()
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    cos = np.sum(ours * ref, axis=-1)
    assert cos.min() >= 0.99999, cos
    assert float(ours[0] @ ours[1]) < 0.9999  # the two inputs are told apart
