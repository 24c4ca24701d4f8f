"""The temporal change head: shapes for any T, what it composes with, save / load, and training it through
the real `changescope train --tasks sequence` command on SynthChange sequences."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from changescope.data.synth.sequence import render_sequence, write_sequences
from changescope.models.change_model import ChangeModel
from changescope.models.heads.temporal_head import TemporalChangeHead, temporal_loss
from changescope.models.hub import from_pretrained, save_pretrained
from changescope.models.presets import build_config
from changescope.models.processor import ChangeProcessor
from changescope.tasks.sequence import detect_sequence, interval_probabilities

SIZE = 64
TEMPORAL = {"d_model": 16, "num_layers": 1, "num_heads": 2, "fine_channels": 8}


def tiny_config(classes=("background", "road", "building", "tree", "water"), temporal=TEMPORAL):
    return build_config(
        "lite",
        0,
        image_size=SIZE,
        classes=list(classes),
        temporal_kwargs=dict(temporal),
        encoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4},
        mask_head_kwargs={"channels": 16},
        change_head_kwargs={"channels": 16},
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ChangeModel(tiny_config()).eval()


def _levels(channels, b, t, size=SIZE):
    strides = (4, 8, 16, 32)
    return [torch.randn(b, t, c, size // s, size // s) for c, s in zip(channels, strides, strict=True)]


@pytest.mark.parametrize("dates", [2, 3, 6, 16])
def test_head_gives_one_logit_per_interval_for_any_number_of_dates(dates):
    head = TemporalChangeHead([24, 40, 112, 320], **TEMPORAL).eval()
    out = head(_levels([24, 40, 112, 320], 2, dates))
    assert out.shape == (2, dates - 1, SIZE // 4, SIZE // 4)


def test_offsets_are_relative_to_each_interval_and_clipped():
    head = TemporalChangeHead([24, 40, 112, 320], max_offset=2, **{k: v for k, v in TEMPORAL.items()})
    ids = head.offset_ids(6, torch.device("cpu")) - head.max_offset
    # row i: t - i, clipped to [-2, 3]; the interval's own dates are 0 and 1
    assert ids[0].tolist() == [0, 1, 2, 3, 3, 3]
    assert ids[4].tolist() == [-2, -2, -2, -1, 0, 1]
    assert all(ids[i, i] == 0 and ids[i, i + 1] == 1 for i in range(5))


def test_the_head_sees_the_order_of_the_dates():
    torch.manual_seed(1)
    head = TemporalChangeHead([24, 40, 112, 320], **TEMPORAL).eval()
    levels = _levels([24, 40, 112, 320], 1, 4)
    reversed_levels = [f.flip(1) for f in levels]
    with torch.no_grad():
        a, b = head(levels), head(reversed_levels).flip(1)
    assert not torch.allclose(a, b, atol=1e-4)


def test_loss_skips_ignored_pixels_and_falls_when_logits_agree():
    target = torch.zeros(1, 2, 8, 8, dtype=torch.long)
    target[0, 1, :4] = 1
    target[0, 0, :, :2] = 255
    right = torch.where(target == 1, 8.0, -8.0)
    wrong = -right
    assert temporal_loss(right, target, 255) < 0.1 < temporal_loss(wrong, target, 255)
    # the ignored pixels' logits do not matter
    moved = right.clone()
    moved[target == 255] = 100.0
    assert torch.isclose(temporal_loss(moved, target, 255), temporal_loss(right, target, 255))


def test_sequence_composes_the_temporal_decision_with_the_pair_classes(model):
    images = torch.rand(2, 4, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model.sequence(images)
    assert out.change_logit.shape == (2, 3, SIZE, SIZE)
    assert out.mask_logits.shape == (2, 3, 5, SIZE, SIZE)
    assert out.memory.shape[0] == 2 * 3
    changed = out.mask_logits.argmax(2) > 0
    threshold = model.config.temporal_threshold
    assert torch.equal(changed, out.change_logit.sigmoid() > threshold)


def test_a_temporal_head_alone_maps_binary_change():
    torch.manual_seed(2)
    config = build_config("lite", 0, image_size=SIZE, classes=[], temporal_kwargs=dict(TEMPORAL))
    alone = ChangeModel(config).eval()
    assert alone.tasks == ("sequence",) and alone.sequence_classes == ["background", "change"]
    with torch.no_grad():
        out = alone.sequence(torch.rand(1, 3, 3, SIZE, SIZE))
    assert out.mask_logits.shape == (1, 2, 2, SIZE, SIZE) and out.memory is None


def test_a_single_stream_encoder_cannot_have_a_temporal_head():
    config = build_config(
        "sen",
        0,
        image_size=SIZE,
        classes=["background", "change"],
        backbone="resnet18",
        backbone_pretrained=False,
    )
    config.temporal_kwargs = dict(TEMPORAL)
    with pytest.raises(ValueError, match="single-stream"):
        ChangeModel(config)


def test_save_and_load_keep_the_temporal_head(tmp_path, model):
    processor = ChangeProcessor(None, SIZE, 24)
    model.config.temporal_threshold = 0.37
    save_pretrained(model, processor, tmp_path / "m")
    loaded, _ = from_pretrained(tmp_path / "m")
    assert loaded.config.temporal_kwargs == TEMPORAL and loaded.config.temporal_threshold == 0.37
    images = torch.rand(1, 3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(
            model.sequence(images).change_logit, loaded.eval().sequence(images).change_logit
        )
    model.config.temporal_threshold = 0.5


def test_detect_sequence_uses_the_temporal_head_unless_asked_for_the_baseline(model):
    processor = ChangeProcessor(None, SIZE, 24)
    seq = render_sequence(5, 1, 96, 4)  # larger than the model: resized to it and back
    found = detect_sequence(model, processor, list(seq.images), seq.dates)
    assert found.method == "temporal"
    assert found.interval_masks.shape == (3, 96, 96) and found.first_change.shape == (96, 96)
    assert [r["from"] for r in found.results] == seq.dates[:-1]
    baseline = detect_sequence(model, processor, list(seq.images), seq.dates, baseline=True)
    assert baseline.method == "pairs" and baseline.interval_masks.shape == (3, 96, 96)
    probs = interval_probabilities(model, processor, torch.rand(2, 3, 3, 80, 80))
    assert probs.shape == (2, 2, 5, 80, 80)
    assert torch.allclose(probs.sum(2), torch.ones(2, 2, 80, 80), atol=1e-4)


# ------------------------------------------------------------------------------- training end to end
def cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "changescope", *map(str, args)], capture_output=True, text=True
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


TINY_SEQUENCE_YAML = f"""\
preset: lite
epochs: 2
batch_size: 4
image_size: {SIZE}
pretrained: false
seed: 1
lr: 0.002
overrides:
  encoder_kwargs: {{d_model: 32, num_layers: 1, num_heads: 4}}
  temporal_kwargs: {json.dumps(TEMPORAL)}
"""


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    return write_sequences(tmp_path_factory.mktemp("seq") / "data", 24, size=SIZE, seed=7, dates=4)


def test_train_sequence_from_the_command_line(tmp_path, sequences):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_SEQUENCE_YAML)
    out = tmp_path / "run"
    cli("train", "--config", config, "--data", sequences, "--out", out)  # tasks: sequence, from the data
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("val/interval_IoU", "val/interval_F1", "val/first_change_exact", "val/change_threshold"):
        assert key in rows[-1]
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["temporal_kwargs"] == TEMPORAL
    best = max(rows, key=lambda r: r["val/interval_IoU"])
    assert saved["temporal_threshold"] == pytest.approx(best["val/change_threshold"])
    model, processor = from_pretrained(out / "model")
    seq = render_sequence(7, 0, SIZE, 4)
    found = detect_sequence(model.eval(), processor, list(seq.images), seq.dates)
    assert found.method == "temporal" and found.interval_masks.max() <= 1


def test_sequence_runs_refuse_pair_tasks_and_pair_data(tmp_path, sequences, synth):
    mixed = cli(
        "train", "--data", sequences, "--tasks", "sequence,mask", "--out", tmp_path / "a", check=False
    )
    assert mixed.returncode != 0 and "--tasks sequence" in mixed.stderr
    wrong = cli("train", "--data", synth, "--tasks", "sequence", "--out", tmp_path / "b", check=False)
    assert wrong.returncode != 0 and "no sequences" in wrong.stderr
    assert not (tmp_path / "b" / "model").exists()


def test_weather_makes_consecutive_pairs_differ_where_nothing_changed():
    """Why the temporal head exists: a cloud on one date shows up in both of its intervals."""
    for index in range(40):
        seq = render_sequence(9, index, SIZE, 4)
        cloudy = [t for t, n in enumerate(seq.nuisance) if n["clouds"] > 0.1]
        if cloudy and 0 < cloudy[0] < 3 and not seq.events:
            t = cloudy[0]
            before = np.abs(seq.images[t].astype(int) - seq.images[t - 1]).mean()
            after = np.abs(seq.images[t + 1].astype(int) - seq.images[t]).mean()
            span = np.abs(seq.images[t + 1].astype(int) - seq.images[t - 1]).mean()
            assert before > span and after > span
            return
    pytest.fail("no unchanged sequence with a cloudy middle date among 40")
