"""``xrais infer`` and ``xrais plot`` end to end, with a checkpoint trained here.

The checkpoint is a ResNet-18 resolution model trained in this file on conditioned quadrants:
three real PILATUS 6M frames (each quadrant labelled with its own resolution, so that a mix-up
of quadrants shows) and two simulated PILATUS 2M images (from the simulator's shards, labelled
with the resolution they were simulated at). Its FC1/FC2 head is fitted to those 20 quadrants
by gradient steps; the backbone keeps its seeded random convolutions, which is enough to tell
the quadrants apart (a full training run would take far longer than a test may).

Inference then starts from the raw files (the real CBFs, and the simulator's raw miniCBFs): it
must read them, condition them and turn the network's output into 1/d with each image's own
geometry exactly as the training did, or the resolutions it reports will not be the labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from xrais.conditioning import condition, read_image
from xrais.infer import read_results
from xrais.io import read_shard

#: Approximate resolutions of the thaumatin grid-scan frames (shared/data README, "d 5 %").
REAL_LABELS_A = {"p6m_0001": 2.49, "p6m_0007": 2.14, "p6m_0015": 2.99}
QUADRANT_STEP_A = 0.08  # quadrant q of a real frame is labelled d + 0.08·q


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Two simulated PILATUS 2M images: raw miniCBFs, and shards of their 4 quadrants with labels."""
    from xrais.simulate.config import SimulationConfig
    from xrais.simulate.dataset import simulate_dataset

    out = tmp_path_factory.mktemp("sim")
    cfg = SimulationConfig(detector_choices=("pilatus2m",), distance_mm_range=(180.0, 220.0),
                           cell_volume_A3_range=(6e4, 1.5e5), mosaic_domains=2, shard_size=4, quadrants=4,
                           space_group_choices=("P 21 21 21", "P 43 21 2"))
    report = simulate_dataset(cfg, 2, out, seed=21, backend="numba", save_raw="cbf")
    assert sorted(report.made) == [0, 1]
    quads, cols = [], {}
    for shard in sorted(out.glob("sim_r*_*.h5")):
        images, columns, _ = read_shard(shard)
        quads.append(images)
        for k, v in columns.items():
            cols.setdefault(k, []).append(v)
    cols = {k: np.concatenate(v) for k, v in cols.items()}
    return out, np.concatenate(quads), cols


def _train_resolution_model(quads: np.ndarray, geometry: np.ndarray, inv_d: np.ndarray):
    """A ResNet-18 resolution model fitted to quadrants (M, 512, 512) with geometry (M, 3) and 1/d (M,).

    The seeded backbone's features are computed once; the head (FC1, ReLU, FC2) is fitted to
    them by Adam steps on the radius the model outputs, with the features standardised, then
    FC2 is solved by least squares on the hidden features. The standardisation is folded into
    FC1, so the saved model is a plain XraisResNet.
    """
    import torch

    from xrais.models import build_model, inv_resolution_to_radius

    torch.manual_seed(0)
    model = build_model("resnet18", "resolution", input_std=64.0).eval()
    with torch.no_grad():
        x = torch.from_numpy(quads[:, None]).float()
        feats = torch.cat([model.backbone((c - model.input_mean) / model.input_std) for c in x.split(8)])
    mu, sd = feats.mean(0), feats.std(0).clamp_min(0.1 * float(feats.std(0).median()))
    z = (feats - mu) / sd
    g = torch.from_numpy(geometry.astype(np.float32))
    target = inv_resolution_to_radius(torch.from_numpy(inv_d.astype(np.float32)), g)
    scale = float(target.std())
    with torch.no_grad():
        model.fc2.bias.fill_(float(target.mean()))
    opt = torch.optim.Adam([*model.fc1.parameters(), *model.fc2.parameters()], lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = ((model.fc2(model.relu(model.fc1(z)))[:, 0] - target) / scale).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        # the last layer exactly: least squares on the 100 hidden features (more than the samples)
        hidden = torch.cat([model.relu(model.fc1(z)), torch.ones(len(z), 1)], dim=1).double()
        solution = torch.linalg.lstsq(hidden, target.double()[:, None], driver="gelsd").solution[:, 0]
        model.fc2.weight.copy_(solution[None, :-1].float())
        model.fc2.bias.copy_(solution[-1:].float())
        # fold the standardisation into FC1: fc1(z) = (W / sd)·f + (b − (W / sd)·mu)
        w = model.fc1.weight / sd
        model.fc1.bias -= w @ mu
        model.fc1.weight.copy_(w)
        pred = model.fc2(model.relu(model.fc1(feats)))[:, 0]
    return model, float((pred - target).pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, simulated, real_images):
    from xrais.models import save_checkpoint

    _, sim_quads, cols = simulated
    quads, geometry, inv_d = [sim_quads], [], []
    geometry.append(np.stack([cols["geometry/distance_mm"], cols["geometry/pixel_mm"] * cols["geometry/downsample"],
                              cols["geometry/wavelength_A"]], axis=1))
    inv_d.append(1.0 / cols["labels/resolution_A"])
    for key, path in zip(REAL_LABELS_A, real_images(list(REAL_LABELS_A))):
        image = read_image(path)
        quads.append(condition(image))
        pooled = image.detector.pixel_size_mm[0] * image.downsample_block
        geometry.append(np.tile([image.detector.distance_mm, pooled, image.beam.wavelength_A], (4, 1)))
        inv_d.append(1.0 / (REAL_LABELS_A[key] + QUADRANT_STEP_A * np.arange(4)))
    model, rms_radius_px = _train_resolution_model(np.concatenate(quads), np.concatenate(geometry),
                                                   np.concatenate(inv_d))
    assert rms_radius_px < 0.5, f"the fit did not converge: rms {rms_radius_px:.2f} pooled px"
    path = tmp_path_factory.mktemp("trained") / "resolution_resnet18.safetensors"
    return save_checkpoint(model, path, trained_on="tests/infer/test_end_to_end.py", rms_radius_px=rms_radius_px)


def test_infer_and_plot_from_the_command_line(trained, simulated, real_images, tmp_path, helpers):
    sim_out, _, cols = simulated
    reals = real_images(list(REAL_LABELS_A))
    raws = sorted((sim_out / "raw").glob("sim_*.cbf"))
    out = tmp_path / "results"
    result = helpers.cli("infer", *map(str, reals), str(sim_out / "raw"), "--model", str(trained), "--out", str(out),
                         "--device", "cpu", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert "5 scored, 0 errors" in result.output
    rows = read_results(out).set_index("file")
    for key, path in zip(REAL_LABELS_A, reals):
        expected = REAL_LABELS_A[key] + QUADRANT_STEP_A * np.arange(4)
        got = [rows.loc[str(path), f"resolution_q{q}_A"] for q in range(4)]
        np.testing.assert_allclose(got, expected, rtol=0.02, err_msg=path.name)
        assert rows.loc[str(path), "min_resolution_A"] == pytest.approx(min(got))
    for i, raw in enumerate(raws):
        label = cols["labels/resolution_A"][cols["source/index"] == i][0]
        row = rows.loc[str(raw)]
        np.testing.assert_allclose([row[f"resolution_q{q}_A"] for q in range(4)], label, rtol=0.02, err_msg=raw.name)
        assert row["distance_mm"] == pytest.approx(cols["labels/distance_mm"][cols["source/index"] == i][0], abs=1e-3)
        assert row["detector"] == "pilatus2m" and row["block"] == 2
    # the strip chart of those rows: two data sets (thau_3_2 and sim)
    png = tmp_path / "strip.png"
    result = helpers.cli("plot", str(out), "--out", str(png))
    assert result.exit_code == 0, result.output
    assert "2 data set(s), 5 images" in result.output and png.stat().st_size > 20_000
