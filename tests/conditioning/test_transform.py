"""The conditioning transform: Figure 4, quadrant geometry, padding, CPU/torch parity, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrais.conditioning import condition, pool_sqrt, reference_condition
from xrais.conditioning.transform import condition_pixels, quadrant_corner_px
from xrais.conditioning.transform_torch import condition_torch
from xrais.errors import ConfigError, GeometryError

# xrais.txt Figure 4: an 8×8 region of a PILATUS 6M image around a Bragg reflection (raw
# counts) and its 2×2-block conditioned 4×4 result.
FIGURE4_RAW = np.array(
    [
        [26, 35, 26, 28, 34, 30, 24, 24],
        [33, 29, 19, 29, 38, 35, 37, 28],
        [27, 18, 34, 30, 34, 37, 19, 37],
        [35, 34, 127, 194, 74, 30, 30, 27],
        [26, 29, 63, 318, 298, 66, 36, 27],
        [27, 28, 30, 70, 101, 38, 37, 29],
        [25, 36, 49, 36, 34, 50, 26, 30],
        [26, 22, 34, 26, 23, 37, 31, 27],
    ],
    dtype=np.int32,
)
FIGURE4_CONDITIONED = np.array([[5, 5, 6, 6], [5, 13, 8, 6], [5, 17, 17, 6], [6, 7, 7, 5]], dtype=np.uint8)


def test_figure4_example():
    out = pool_sqrt(FIGURE4_RAW, 2)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, FIGURE4_CONDITIONED)


def test_figure4_through_torch_maxpool():
    # the same block through the torch path: place it in the lower-right quadrant at the centre
    img = np.zeros((40, 40), np.int32)
    img[20:28, 20:28] = FIGURE4_RAW
    q = condition_torch(torch.from_numpy(img), (20.0, 20.0), 2)
    np.testing.assert_array_equal(q[2, :4, :4].numpy(), FIGURE4_CONDITIONED)


def test_sqrt_floor_clip_and_invalid_pixels():
    px = np.array([[0, 1, 3, 4, 8, 9, 65024, 65025, 65535, 65536, 10**7, -5]], dtype=np.int64)
    assert pool_sqrt(px, 1).tolist() == [[0, 1, 1, 2, 2, 3, 254, 255, 255, 255, 255, 0]]
    f = np.array([[24.999998, 25.0, np.nan, np.inf, -np.inf]], dtype=np.float32)
    assert pool_sqrt(f, 1).tolist() == [[4, 5, 0, 255, 0]]
    mask = np.zeros_like(px, dtype=bool)
    mask[0, 5] = True
    assert pool_sqrt(px, 1, mask)[0, 5] == 0
    # a partial block at the edge pools what it has
    assert pool_sqrt(np.full((3, 3), 16), 2).tolist() == [[4, 4], [4, 4]]


def test_quadrants_put_the_beam_centre_at_the_corner():
    # one bright pixel in each of the four regions around the beam centre, (du, dv) blocks away
    block, cf, cs = 2, 600, 500
    img = np.zeros((1000, 1200), np.int32)
    spots = {0: (-1, -1, 100), 1: (1, -1, 400), 2: (1, 1, 900), 3: (-1, 1, 1600)}  # (df, ds, counts)
    for q, (df, ds, counts) in spots.items():
        f = cf + (3 * block if df > 0 else -3 * block - 1)  # 3 blocks along fast
        s = cs + (7 * block if ds > 0 else -7 * block - 1)  # 7 blocks along slow
        img[s, f] = counts
    out = condition(img, beam_center_px=(cf + 0.3, cs - 0.4), block=block)
    assert out.shape == (4, 512, 512)
    for q, (_, _, counts) in spots.items():
        (i,), (j,) = np.nonzero(out[q])
        assert out[q, i, j] == int(np.sqrt(counts))
        # quadrants 0 and 2 keep slow as rows; 1 and 3 are turned by 90° (transposed)
        assert (i, j) == ((7, 3) if q in (0, 2) else (3, 7))
    np.testing.assert_array_equal(out, reference_condition(img, (cf + 0.3, cs - 0.4), block))


def test_quadrants_are_turned_never_mirrored():
    # An asymmetric pattern in the lower-right region: rotating the upper-left copy of it
    # (the image turned by 180° about the centre) must give the same quadrant.
    rng = np.random.default_rng(4)
    img = np.zeros((256, 256), np.int32)
    img[128:, 128:] = rng.integers(0, 500, size=(128, 128))
    turned = img[::-1, ::-1].copy()
    a = condition(img, beam_center_px=(128.0, 128.0), block=1)
    b = condition(turned, beam_center_px=(128.0, 128.0), block=1)
    np.testing.assert_array_equal(a[2], b[0])
    c = condition(np.rot90(img, 1).copy(), beam_center_px=(128.0, 128.0), block=1)  # anticlockwise 90°
    np.testing.assert_array_equal(a[2], c[1])


def test_zero_padding_beyond_the_edge_never_shifts():
    img = np.full((300, 200), 100, np.int32)  # a small detector: most of each quadrant is off it
    out = condition(img, beam_center_px=(50.0, 250.0), block=1)
    # lower-right region: 150 px to the right and 50 px down are on the detector
    assert (out[2, :50, :150] == 10).all() and (out[2, 50:, :] == 0).all() and (out[2, :, 150:] == 0).all()
    # upper-left: 50 px to the left, 250 px up
    assert (out[0, :250, :50] == 10).all() and (out[0, 250:] == 0).all() and (out[0, :, 50:] == 0).all()


def test_single_quadrant_is_the_upper_left_one():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 3000, size=(700, 900)).astype(np.int32)
    four = condition(img, beam_center_px=(455.5, 340.2), block=2)
    one = condition(img, beam_center_px=(455.5, 340.2), block=2, quadrants=1)
    assert one.shape == (1, 512, 512)
    np.testing.assert_array_equal(one[0], four[0])


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("block", [1, 2, 4])
def test_numba_torch_and_reference_agree(dtype, block):
    rng = np.random.default_rng(block)
    img = rng.gamma(0.3, 400.0, size=(811, 977)).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        img[rng.random(img.shape) < 0.01] = np.nan
        img[3, 3] = 24.999998  # a hair under a perfect square
    mask = rng.random(img.shape) < 0.05
    centre = (401.7, 388.2)
    ref = reference_condition(img, centre, block, mask=mask)
    np.testing.assert_array_equal(condition_pixels(img, centre, block, mask=mask), ref)
    np.testing.assert_array_equal(condition_torch(img, centre, block, mask=mask).numpy(), ref)


def test_a_quadrant_off_the_detector_side_is_allowed_when_not_requested():
    img = np.ones((50, 50), np.int32) * 400
    # beam centre on the right edge: quadrants 1 and 2 would be empty, quadrant 0 is not
    assert condition(img, beam_center_px=(50.0, 25.0), block=1, quadrants=1)[0, :25, :50].min() == 20
    with pytest.raises(GeometryError, match="quadrant 1"):
        condition(img, beam_center_px=(50.0, 25.0), block=1)


def test_corner_is_the_rounded_beam_centre():
    assert quadrant_corner_px((10.49, 20.5), (100, 100)) == (10, 21)
    assert quadrant_corner_px((100.0, 0.0), (100, 100)) == (100, 0)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: condition(np.zeros((50, 50)), beam_center_px=(60.0, 10.0), block=2), GeometryError, "outside"),
        (lambda: condition(np.zeros((50, 50)), beam_center_px=(np.nan, 10.0), block=2), GeometryError, "finite"),
        (lambda: condition(np.zeros((5, 5, 5)), beam_center_px=(1, 1), block=2), ConfigError, "2-D"),
        (lambda: condition(np.full((50, 50), np.nan), beam_center_px=(1, 1), block=2), ConfigError, "NaN"),
        (lambda: condition(np.zeros((50, 50)), beam_center_px=(1, 1), block=0), ConfigError, "block"),
        (lambda: condition(np.zeros((50, 50)), beam_center_px=(1, 1), block=2, quadrants=3), ConfigError, "1 or 4"),
        (lambda: condition(np.zeros((50, 50))), ConfigError, "beam_center_px"),
        (lambda: condition(np.zeros((50, 50)), beam_center_px=(1, 1), block=2, mask=np.zeros((5, 5), bool)),
         ConfigError, "mask"),
        (lambda: condition_torch(torch.full((50, 50), float("nan")), (1, 1), 2), ConfigError, "NaN"),
        (lambda: condition_torch(torch.zeros(50, 50), (51, 1), 2), GeometryError, "outside"),
        (lambda: condition(np.zeros((3, 50)), beam_center_px=(1, 1), block=4), ConfigError, "smaller than one 4×4"),
        (lambda: condition(np.zeros((50, 50)), beam_center_px=(0.2, 20), block=2), GeometryError,
         r"quadrant 0 \(upper left\) would hold no detector pixels"),
        (lambda: condition_torch(torch.zeros(50, 50), (20, 49.9), 2), GeometryError, r"quadrant 2 \(lower right\)"),
    ],
)
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
