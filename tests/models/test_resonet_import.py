"""Importing resonet weights: key mapping, shape checks and identical outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from xrais.errors import CheckpointError
from xrais.models import load_pretrained
from xrais.models.resonet_import import import_resonet


class ResonetLayout(nn.Module):
    """The module tree of resonet's ResNet model: the attribute names fix the state-dict keys."""

    def __init__(self, depth: int = 18, n_geom: int = 5) -> None:
        super().__init__()
        self.resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.DROP = nn.Dropout(p=0.5)
        self.fc1 = nn.Linear(1000, 100)
        self.fc2 = nn.Linear(100, 1)
        self.fc2_geom = nn.Linear(100 + n_geom, 1)
        self.Sigmoid = nn.Sigmoid()

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.resnet(x))))[:, 0]


def resonet_file(tmp_path, depth=18, prefix="module.", **state_changes):
    torch.manual_seed(3)
    net = ResonetLayout(depth).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so they must be carried over
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {prefix + k: v for k, v in net.state_dict().items()}
    state.update(state_changes)
    path = tmp_path / "nety_ep40.nn"
    torch.save(state, path)
    return net, path


def test_resolution_weights_give_resonets_outputs(tmp_path, quadrants):
    net, path = resonet_file(tmp_path)
    out = tmp_path / "imported.safetensors"
    model = import_resonet(path, arch="resnet18", task="resolution", out=out)
    x = torch.from_numpy(quadrants[:1, 0, None]).float()
    # resonet's geometry row (distance, pixel size, wavelength, downsample) and its 1/d transform
    D, pix, lam, fact = 200.0, 0.172, 1.0, 2.0
    with torch.no_grad():
        r = net.raw(x)
        expected = (2 / lam) * torch.sin(0.5 * torch.arctan(fact * pix / D * r))
        got = model(x, torch.tensor([[D, fact * pix, lam]]))["inv_resolution_per_A"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    reloaded = load_pretrained(out)
    assert reloaded.provenance["imported_from"]["format"] == "resonet"
    assert reloaded.provenance["imported_from"]["file"] == "nety_ep40.nn"
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(x, torch.tensor([[D, fact * pix, lam]]))["inv_resolution_per_A"],
                                      got.numpy())


def test_multilattice_weights_without_ddp_prefix(tmp_path, quadrants):
    net, path = resonet_file(tmp_path, prefix="")
    model = import_resonet(path, arch="resnet18", task="multilattice")
    x = torch.from_numpy(quadrants[0, :1, None]).float()
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(model(x)["multilattice_logit"]), net.Sigmoid(net.raw(x)))
    assert model.config.dropout == 0.5 and not model.training


def test_wrong_architecture_is_refused(tmp_path):
    _, path = resonet_file(tmp_path, depth=18)
    with pytest.raises(CheckpointError, match=r"nety_ep40\.nn: not a resonet resnet34 model"):
        import_resonet(path, arch="resnet34", task="resolution")


def test_unknown_keys_and_shapes_are_refused(tmp_path):
    _, path = resonet_file(tmp_path, **{"module.fc3.weight": torch.zeros(1, 100)})
    with pytest.raises(CheckpointError, match=r"nety_ep40\.nn: expected resonet keys.*module\.fc3\.weight"):
        import_resonet(path, arch="resnet18", task="resolution")
    _, path = resonet_file(tmp_path, **{"module.fc2.weight": torch.zeros(3, 100), "module.fc2.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"shapes differ.*fc2\.weight \(3, 100\) \(expected \(1, 100\)\)"):
        import_resonet(path, arch="resnet18", task="resolution")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.nn"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match=r"junk\.nn: expected a torch-saved resonet state dict"):
        import_resonet(path, arch="resnet18", task="resolution")
    torch.save([1, 2, 3], tmp_path / "list.nn")
    with pytest.raises(CheckpointError, match=r"list\.nn: expected a state dict"):
        import_resonet(tmp_path / "list.nn", arch="resnet18", task="resolution")
    with pytest.raises(CheckpointError, match="not found"):
        import_resonet(tmp_path / "missing.nn", arch="resnet18", task="resolution")
