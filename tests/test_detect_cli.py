"""One model for masks and captions through the real `changescope` command: train `mci`, detect, evaluate.

A tiny `mci` (ResNet-18 instead of ResNet-50, narrow encoder, set through the YAML config's `overrides`)
on 64 SynthChange pairs at 64 px keeps this in the fast suite.
"""

import json

import numpy as np
import pytest
from PIL import Image
from test_detection import flood_fill_components
from test_train_cli import cli

from changescope.errors import ChangescopeError

MCI_YAML = """\
preset: mci
epochs: 1
batch_size: 16
min_freq: 1
image_size: 64
pretrained: false
seed: 4
overrides:
  backbone: resnet18
  encoder_kwargs: {d_model: 32, num_layers: 1, num_heads: 4}
  decoder_kwargs: {d_model: 32, num_layers: 1, num_heads: 4, ffn_dim: 64, max_len: 24}
  mask_head_kwargs: {channels: 16}
"""


@pytest.fixture(scope="module")
def mci_run(tmp_path_factory, synth):
    folder = tmp_path_factory.mktemp("mci")
    config = folder / "mci.yaml"
    config.write_text(MCI_YAML)
    out = folder / "run"
    summary = json.loads(
        cli("train", "--config", config, "--data", synth, "--out", out).stdout.splitlines()[-1]
    )
    return out, summary


def test_mci_trains_masks_and_captions_by_default(mci_run):
    out, summary = mci_run
    assert summary["tasks"] == ["caption", "mask"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["preset"] == "mci"
    assert config["classes"] == ["background", "road", "building", "tree", "water"]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("val/CIDEr-D", "val/mIoU", "val/mIoU_no_bg", "val/CIDEr-D+mIoU_no_bg"):
        assert key in row
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["monitor"] == "CIDEr-D+mIoU_no_bg"


def test_detect_writes_mask_overlay_and_consistent_counts(tmp_path, mci_run, synth):
    out, _ = mci_run
    # an input size other than the model's (64): outputs come back at the input's size
    a = Image.open(synth / "images/test/A/test_000001.png").resize((90, 70))
    b = Image.open(synth / "images/test/B/test_000001.png").resize((90, 70))
    a.save(tmp_path / "a.png")
    b.save(tmp_path / "b.jpg")
    target = tmp_path / "det"
    printed = cli("detect", out, tmp_path / "a.png", tmp_path / "b.jpg", "--out", target, "--min-area", "4")
    assert "wrote" in printed.stdout
    assert sorted(p.name for p in target.iterdir()) == ["mask.png", "overlay.png", "result.json"]
    mask = np.asarray(Image.open(target / "mask.png"))
    assert mask.shape == (70, 90) and mask.dtype == np.uint8 and mask.max() < 5
    with Image.open(target / "overlay.png") as overlay:
        assert overlay.size == (90, 70) and overlay.mode == "RGB"
    result = json.loads((target / "result.json").read_text())
    assert isinstance(result["caption"], str) and result["min_area"] == 4 and result["size"] == [90, 70]
    for cls, name in enumerate(result["class_ids"].values()):
        if cls == 0:
            continue
        stats = result["classes"][name]
        components = flood_fill_components(mask == cls)
        assert stats["pixels"] == int((mask == cls).sum())
        assert stats["percent"] == pytest.approx(100 * stats["pixels"] / mask.size, abs=1e-4)
        assert stats["objects"] == len(components) == len(stats["boxes"])
        assert all(len(c) >= 4 for c in components)
        for box in stats["boxes"]:
            assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1

    printed = cli("detect", out, tmp_path / "a.png", tmp_path / "b.jpg", "--json", "--min-area", "4").stdout
    as_json = json.loads(printed)
    assert as_json["classes"] == result["classes"]


def test_evaluate_reports_detection_next_to_captions(mci_run, synth):
    out, _ = mci_run
    result = json.loads(cli("evaluate", out, "--data", synth, "--json", "--no-meteor").stdout)
    assert "CIDEr-D" in result and result["tasks"] == ["caption", "mask"]
    detection = result["detection"]
    for key in ("mIoU", "mIoU_no_bg", "mF1", "mF1_no_bg", "OA"):
        assert key in detection
    assert set(detection["per_class"]["building"]) >= {"IoU", "F1", "precision", "recall"}
    assert detection["pixels"] == result["n"] * 64 * 64
    # test-time views (their averaging is tested in test_change_model.py), in this process to stay fast
    from changescope.tasks.evaluation import evaluate

    views = evaluate(out, synth, "test", meteor=False, tta=4, limit=4)
    assert (result["tta"], views["tta"]) == (1, 4) and views["detection"]["pixels"] == 4 * 64 * 64
    table = cli("evaluate", out, "--data", synth, "--no-meteor").stdout
    assert "CIDEr-D" in table and "mIoU without background" in table and "building" in table


# slow (33 s, two training runs): mask-only training is also run by the --tasks mask fine-tuning tests of
# test_real_change.py; `make test-all` runs this one
@pytest.mark.slow
def test_mask_only_training_and_what_each_model_refuses(tmp_path, synth):
    from test_train_cli import TINY_YAML

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML)
    out = tmp_path / "masks"
    cli("train", "--config", config, "--data", synth, "--out", out, "--tasks", "mask")
    assert not (out / "model" / "vocab.json").exists()
    assert json.loads((out / "model" / "config.json").read_text())["vocab_size"] == 0
    a, b = synth / "images/test/A/test_000000.png", synth / "images/test/B/test_000000.png"
    result = json.loads(cli("detect", out, a, b, "--json").stdout)
    assert result["caption"] is None
    proc = cli("describe", out, a, b, check=False)
    assert proc.returncode == 1 and "has no caption decoder" in proc.stderr and "Traceback" not in proc.stderr

    captions = tmp_path / "captions"
    cli("train", "--config", config, "--data", synth, "--out", captions, "--tasks", "caption")
    proc = cli("detect", captions, a, b, "--out", tmp_path / "never", check=False)
    assert proc.returncode == 1 and "has no change-mask head" in proc.stderr
    assert not (tmp_path / "never").exists()


def test_bad_detect_input_is_one_line_and_writes_nothing(tmp_path, mci_run, synth):
    out, _ = mci_run
    a = synth / "images/test/A/test_000000.png"
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    for args, message in (
        ((a, tmp_path / "missing.png"), "missing.png"),
        ((a, small), "small.png: image is 20x20"),
    ):
        proc = cli("detect", out, *args, "--out", tmp_path / "o", check=False)
        assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    proc = cli("train", "--data", tmp_path, "--out", tmp_path / "r", "--tasks", "roads", check=False)
    assert proc.returncode == 1 and "--tasks takes a comma-separated subset of" in proc.stderr


def test_label_with_values_outside_the_class_map_is_one_line_naming_them(tmp_path, mci_run, synth):
    import shutil

    out, _ = mci_run
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    label = sorted((data / "images/test/label").iterdir())[0]
    pixels = np.asarray(Image.open(label).convert("RGB")).copy()
    pixels[0:2, 0:2] = (7, 8, 9)
    Image.fromarray(pixels).save(label)
    proc = cli("evaluate", out, "--data", data, "--no-meteor", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert label.name in proc.stderr and "(7,8,9)" in proc.stderr and "outside the class map" in proc.stderr


def test_data_without_masks_trains_captions_only_and_refuses_mask_training(tmp_path):
    from data import make_fixtures as fx

    from changescope.errors import DataError
    from changescope.tasks.training import TrainOptions, _prepare_run

    root = fx.make_levir_cc(tmp_path / "levir")
    options = TrainOptions(data=str(root), out=str(tmp_path / "a"), preset="mci", min_freq=1)
    config, vocab = _prepare_run(options, tmp_path)
    assert config.classes == [] and vocab is not None and options.tasks == "caption"
    assert options.monitor == "CIDEr-D"
    masks = TrainOptions(data=str(root), out=str(tmp_path / "b"), preset="mci", tasks="mask")
    with pytest.raises(DataError, match="has no change masks for --tasks mask"):
        _prepare_run(masks, tmp_path)
    wrong = TrainOptions(data=str(root), out=str(tmp_path / "c"), preset="mci", monitor="mIoU_no_bg")
    with pytest.raises(ChangescopeError, match="--monitor mIoU_no_bg needs the mask task"):
        _prepare_run(wrong, tmp_path)
