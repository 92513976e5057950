"""Reader choice: content decides, hints go first, plug-ins join through entry points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xrais.conditioning import DiffractionImage, iter_frames, read_image
from xrais.conditioning.readers import registry
from xrais.conditioning.readers.base import ImageReader
from xrais.errors import CorruptImageError, UnknownFormatError
from xrais.geometry import Beam, Detector


class ToyReader(ImageReader):
    """Three frames of a 64×48 detector in a text file starting with 'TOY'."""

    name = "toy"
    priority = 100

    @classmethod
    def understand(cls, path: Path) -> bool:
        try:
            return path.read_bytes()[:3] == b"TOY"
        except OSError:
            return False

    @property
    def n_frames(self) -> int:
        return 3

    def _read_frame(self, index: int) -> DiffractionImage:
        det = Detector.flat(image_size=(64, 48), pixel_size_mm=0.1, distance_mm=100, beam_center_px=(32, 24))
        px = np.full((48, 64), index, np.int32)
        return DiffractionImage(pixels=px, mask=px < 0, detector=det, beam=Beam(wavelength_A=1.0),
                                beam_center_px=(32.0, 24.0), path=self.path, frame=index, format=self.name)


class _EntryPoint:
    name = "toy"

    def load(self):
        return ToyReader


@pytest.fixture
def with_plugin(monkeypatch):
    monkeypatch.setattr(registry, "_READERS", None)
    monkeypatch.setattr(registry, "entry_points", lambda group: [_EntryPoint()] if group == "xrais.readers" else [])
    yield
    registry._READERS = None


def test_plugin_reader_joins_and_frames_stream(with_plugin, tmp_path):
    path = tmp_path / "a.toy"
    path.write_bytes(b"TOY data")
    assert registry.list_readers()[0] is ToyReader
    assert read_image(path, 2).pixels[0, 0] == 2
    assert [im.frame for im in iter_frames(path)] == [0, 1, 2]


def test_hint_is_tried_first_and_unknown_hint_is_an_error(shared_data):
    path = shared_data("real/pilatus6m/thau_3_2_0001.cbf")
    assert registry.get_reader_class(path, hint="minicbf").name == "minicbf"
    with pytest.raises(UnknownFormatError, match="unknown format hint 'tiff99'"):
        registry.get_reader_class(path, hint="tiff99")


def test_unknown_missing_and_directory_inputs(tmp_path):
    junk = tmp_path / "x.dat"
    junk.write_bytes(b"\x01\x02" * 100)
    with pytest.raises(UnknownFormatError, match=r"x.dat: not a detector image format xrais reads \(tried "):
        read_image(junk)
    with pytest.raises(CorruptImageError, match="nothing.cbf: no such file"):
        read_image(tmp_path / "nothing.cbf")
    with pytest.raises(UnknownFormatError, match="is a directory"):
        read_image(tmp_path)
