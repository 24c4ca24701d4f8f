import numpy as np
import pytest
from PIL import Image

from changescope.data.imageio import read_rgb
from changescope.errors import DataError
from changescope.fileio import atomic_path, write_text_atomic


def test_band_rule(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 255, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_rgb(tmp_path / "rgba.png"), rgba[:, :, :3])  # first 3 bands

    Image.fromarray(np.zeros((6, 5), np.uint8), "L").save(tmp_path / "gray.png")
    with pytest.raises(DataError, match="1-band image") as info:
        read_rgb(tmp_path / "gray.png")
    assert "gray.png" in str(info.value)

    pal = Image.fromarray(np.zeros((6, 5, 3), np.uint8)).convert("P")
    pal.save(tmp_path / "pal.png")
    assert read_rgb(tmp_path / "pal.png").shape == (6, 5, 3)


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="not a readable image"):
        read_rgb(tmp_path / "junk.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png: not a readable image"):
        read_rgb(tmp_path / "cut.png")
    with pytest.raises(DataError, match="file not found"):
        read_rgb(tmp_path / "missing.png")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "v1")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
