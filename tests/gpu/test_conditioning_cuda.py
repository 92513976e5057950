"""The PyTorch conditioning path on a real GPU gives the CPU kernel's output bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrais.conditioning import condition, condition_batch, read_image

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rel", ["real/pilatus6m/thau_3_2_0003.cbf.bz2", "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz",
                                 "real/adsc/adsc.img.bz2"])
def test_cuda_matches_cpu_on_real_frames(shared_data, rel):
    image = read_image(shared_data(rel))
    cpu = condition(image)
    gpu = condition(image, device="cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)


def test_cuda_float_input_and_batch():
    rng = np.random.default_rng(0)
    img = rng.gamma(0.3, 400.0, size=(2000, 1800)).astype(np.float32)
    img[rng.random(img.shape) < 0.01] = np.nan
    cpu = condition(img, beam_center_px=(900.3, 1001.7), block=4)
    gpu = condition(torch.from_numpy(img).cuda(), beam_center_px=(900.3, 1001.7), block=4)
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)


def test_cuda_batch_matches_cpu_batch(shared_data):
    images = [read_image(shared_data(f"real/pilatus6m/thau_3_2_000{i}.cbf{s}")) for i, s in ((1, ""), (3, ".bz2"))]
    np.testing.assert_array_equal(condition_batch(images, device="cuda").cpu().numpy(), condition_batch(images))
