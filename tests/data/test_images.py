"""The shared image reader: an image too large for PIL's decompression-bomb guard is one line naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mela.cli import main
from mela.data.images import image_header, read_image
from mela.errors import MelaError


@pytest.fixture()
def small_bomb_limit(monkeypatch):
    """PIL refuses images over twice MAX_IMAGE_PIXELS: a limit of 1,000 makes a 64 x 64 image a 'bomb'."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


def test_an_oversized_image_is_one_line_naming_the_file_for_header_and_decoding(tmp_path, small_bomb_limit):
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    for read in (lambda: image_header(path), lambda: read_image(path, True)):
        with pytest.raises(MelaError, match=r"cannot read image .*huge.png \(too large: more than 2,000 pixels"):
            read()


def test_tasks_info_on_a_folder_holding_an_oversized_image_exits_2_with_one_line(tmp_path, small_bomb_limit, capsys):
    for task, name, size in (("t1", "a", 64), ("t1", "b", 8)):
        folder = tmp_path / "tasks" / task / name
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((size, size), np.uint8)).save(folder / "x.png")
    assert main(["tasks", "info", str(tmp_path / "tasks")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a/x.png" in err[0] and "too large" in err[0]


def test_a_truncated_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(MelaError, match="cannot read image .*cut.png"):
        read_image(path, True)
