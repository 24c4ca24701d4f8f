"""Output folders: a non-empty --out is refused unless --overwrite, which replaces it whole; a failed run
leaves the earlier output as it was; --overwrite never deletes a folder changescope did not write."""

from __future__ import annotations

import json

import pytest

from changescope.errors import DataError
from changescope.fileio import output_dir


def test_output_dir_builds_beside_and_moves_in_whole(tmp_path):
    out = tmp_path / "run"
    with output_dir(out) as tmp:
        assert tmp.parent == tmp_path and not out.exists()  # nothing under the final name while writing
        (tmp / "result.json").write_text("{}")
        (tmp / "stale.gpkg").write_text("old")
    assert sorted(p.name for p in out.iterdir()) == ["result.json", "stale.gpkg"]
    with pytest.raises(DataError, match="not empty; give --overwrite"):
        with output_dir(out):
            pass
    with output_dir(out, overwrite=True) as tmp:
        (tmp / "result.json").write_text('{"run": 2}')
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]  # the earlier run's file is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left


def test_failed_run_keeps_the_earlier_output(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"run": 1}')
    with pytest.raises(RuntimeError):
        with output_dir(out, overwrite=True) as tmp:
            (tmp / "summary.json").write_text('{"run": 2}')
            raise RuntimeError("interrupted")
    assert json.loads((out / "summary.json").read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_refuses_a_folder_changescope_did_not_write(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataError, match="did not write"):
        with output_dir(tmp_path / "photos", overwrite=True):
            pass
    assert (tmp_path / "photos" / "holiday.jpg").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        with output_dir(tmp_path / "file", overwrite=True):
            pass


def test_detect_again_needs_overwrite_and_replaces_the_folder(tmp_path, synth, capsys):
    from changescope.cli import main

    a = sorted((synth / "images" / "test" / "A").iterdir())[0]
    b = synth / "images" / "test" / "B" / a.name
    out = tmp_path / "det"
    assert main(["detect", str(a), str(b), "--out", str(out)]) == 0
    first = sorted(p.name for p in out.iterdir())
    assert first == ["mask.png", "overlay.png", "result.json"]
    (out / "extra.txt").write_text("left by the user after the first run")
    capsys.readouterr()
    assert main(["detect", str(a), str(b), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "extra.txt").exists()
    assert main(["detect", str(a), str(b), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == first


def test_scene_again_in_another_vector_format_leaves_no_stale_file(tmp_path):
    pytest.importorskip("rasterio")
    from changescope.cli import main
    from changescope.geo.synth_scene import write_synth_scene

    scene = write_synth_scene(tmp_path / "scene", size=256, seed=4, changed=True)
    out = tmp_path / "out"
    args = ["scene", str(scene["A"]), str(scene["B"]), "--out", str(out), "--max-captions", "1", "--json"]
    assert main(args) == 0
    assert (out / "changes.geojson").exists()
    assert main([*args, "--vector-format", "gpkg", "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["changes.gpkg", "changes.tif", "report.html", "summary.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
