"""Every real file in shared/data opens through the registry and conditions correctly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrais.conditioning import condition, read_image, reference_condition
from xrais.conditioning.readers.registry import get_reader_class
from xrais.conditioning.transform import quadrant_corner_px

# file, reader, block
REAL_FILES = [
    ("real/pilatus6m/thau_3_2_0001.cbf", "minicbf", 2),
    ("real/pilatus6m/thau_3_2_0003.cbf.bz2", "minicbf", 2),
    ("real/pilatus6m/thau_3_2_0007.cbf.bz2", "minicbf", 2),
    ("real/pilatus6m/thau_3_2_0015.cbf", "minicbf", 2),
    ("real/pilatus6m/DLS_I03_smargon_0001.cbf.gz", "minicbf", 2),
    ("real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz", "minicbf", 4),
    ("real/eiger2_16m_stream/5291452/image000044", "dectris_stream", 4),
    ("real/pilatus12m/DLS_I23_P12M_thau_00001.cbf.gz", "minicbf", 2),
    ("real/pilatus2m/l-cyst_01_00001.cbf", "minicbf", 2),
    ("real/rayonix340/hit-20181213155134902.cbf", "imgcif", 2),
    ("real/cspad/idx-20130301060858401.cbf", "imgcif", 2),
    ("real/adsc/adsc.img.bz2", "smv", 4),
]


def _on_detector_extent(shape, corner, block, q):
    """Pooled rows and columns of quadrant q that hold detector pixels (the rest is padding)."""
    n_slow, n_fast = shape
    cf, cs = corner
    df, ds = [(-1, -1), (1, -1), (1, 1), (-1, 1)][q]
    along_f = math.ceil(((n_fast - cf) if df > 0 else cf) / block)
    along_s = math.ceil(((n_slow - cs) if ds > 0 else cs) / block)
    rows, cols = (along_s, along_f) if df == ds else (along_f, along_s)
    return min(rows, 512), min(cols, 512)


@pytest.mark.parametrize("rel, reader, block", REAL_FILES)
def test_real_file_conditions(shared_data, rel, reader, block):
    path = shared_data(rel)
    assert get_reader_class(path).name == reader
    image = read_image(path)
    assert image.downsample_block == block
    out = condition(image)
    assert out.shape == (4, 512, 512) and out.dtype == np.uint8
    # the fast kernel equals the plain statement of the transform around this beam centre
    np.testing.assert_array_equal(out, reference_condition(image.pixels, image.beam_center_px, block, mask=image.mask))
    # zero padding exactly where the quadrant leaves the detector, never a shift
    corner = quadrant_corner_px(image.beam_center_px, image.shape)
    for q in range(4):
        rows, cols = _on_detector_extent(image.shape, corner, block, q)
        assert not out[q, rows:, :].any() and not out[q, :, cols:].any()
    # the brightest valid pixel in reach survives pooling as floor(sqrt(counts))
    cf, cs = corner
    half = 512 * block
    window = np.where(image.mask, 0, image.pixels)[max(cs - half, 0) : cs + half, max(cf - half, 0) : cf + half]
    assert int(out.max()) == min(255, math.isqrt(int(max(window.max(), 0))))
    assert condition(image, quadrants=1).shape == (1, 512, 512)


def test_hits_are_bright_and_blank_frames_dark(shared_data):
    names = ["thau_3_2_0003.cbf.bz2", "thau_3_2_0007.cbf.bz2", "thau_3_2_0001.cbf", "thau_3_2_0015.cbf"]
    images = [read_image(shared_data(f"real/pilatus6m/{n}")) for n in names]
    # a blank frame: background photons only (the weakest frame's mean), the same mask
    weak = images[-1]
    blank = np.random.default_rng(0).poisson(weak.valid_pixels().mean(), size=weak.shape).astype(np.int32)
    bright = [int((condition(im) >= 6).sum()) for im in images]
    bright.append(int((condition(blank, weak.beam_center_px, 2, mask=weak.mask) >= 6).sum()))
    # strongest → weakest hit (the data README's spot counts: 1422, 1122, 302, 51), then blank
    assert bright == sorted(bright, reverse=True) and len(set(bright)) == 5
    assert bright[-1] == 0 and bright[-2] > 0
    assert bright[0] > 1000


def test_beam_centre_is_at_the_quadrant_corner_on_a_real_frame(shared_data):
    """A bright marker one block from the beam centre lands next to pixel [0, 0] of its quadrant."""
    image = read_image(shared_data("real/pilatus6m/DLS_I03_smargon_0001.cbf.gz"))
    pixels = np.where(image.mask, 0, image.pixels).astype(np.int32)
    cf, cs = quadrant_corner_px(image.beam_center_px, image.shape)
    pixels[cs, cf] = 40_000  # the pixel just down-right of the corner: quadrant 2, block [0, 0]
    pixels[cs - 1, cf - 1] = 30_000  # just up-left: quadrant 0, block [0, 0]
    out = condition(pixels, image.beam_center_px, 2)
    assert out[2, 0, 0] == math.isqrt(40_000) and out[0, 0, 0] == math.isqrt(30_000)


def test_batch_equals_one_at_a_time(shared_data):
    from xrais.conditioning import condition_batch

    images = [read_image(shared_data(rel)) for rel in ("real/pilatus6m/thau_3_2_0001.cbf", "real/adsc/adsc.img.bz2")]
    batch = condition_batch(images, quadrants=1)
    assert batch.shape == (2, 1, 512, 512)
    for got, image in zip(batch, images):
        np.testing.assert_array_equal(got, condition(image, quadrants=1))
    torch_batch = condition_batch(images, quadrants=1, device="cpu")
    np.testing.assert_array_equal(torch_batch.numpy(), batch)
