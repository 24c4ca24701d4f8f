"""Real change data in training and inference (issue 12): the change head, binary labels mixed into class
data, tiles of large pairs, mix files, fine-tuning with --init, GSD, and captions that agree with masks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REALDATA  # noqa: E402
from PIL import Image
from test_train_cli import TINY_YAML as TRAIN_TINY_YAML
from test_train_cli import cli

from changescope.data.sample import IGNORE_INDEX, UNKNOWN_CHANGE
from changescope.errors import DataError

# the training tests' tiny architecture, with narrow mask and change heads
TINY_YAML = (
    TRAIN_TINY_YAML + "  mask_head_kwargs: {channels: 16}\n" + "  change_head_kwargs: {channels: 16}\n"
)


def binary_folder(root: Path, size=(100, 150)) -> Path:
    """A generic change-detection folder (train / val splits) of pairs larger than the tiny model's size:
    a bright square appears in B, labelled 255."""
    rng = np.random.default_rng(0)
    h, w = size
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            a = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
            b = a.copy()
            label = np.zeros((h, w), np.uint8)
            y, x = 10 + 20 * i, 30 + 25 * i
            b[y : y + 30, x : x + 30] = 230
            label[y : y + 30, x : x + 30] = 255
            for sub, arr in (("A", a), ("B", b), ("label", label)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / split / sub / f"{split}_{i}.png")
    return root


# -- the change head and its losses ---------------------------------------------------------------------


def test_compose_says_no_change_exactly_where_the_change_probability_is_at_most_a_half():
    from changescope.models.heads.mask_head import compose

    classes = torch.randn(1, 4, 8, 8) * 3
    change = torch.linspace(-4, 4, 64).reshape(1, 8, 8)
    pred = compose(classes, change).argmax(1)
    assert torch.equal(pred == 0, torch.sigmoid(change) <= 0.5)
    best = classes[:, 1:].argmax(1) + 1
    assert torch.equal(pred[pred > 0], best[pred > 0])
    assert torch.equal(compose(classes, None), classes)


def test_unknown_change_pixels_train_the_change_logit_and_no_class():
    from changescope.models.heads.mask_head import mask_loss

    classes = torch.zeros(1, 3, 4, 4, requires_grad=True)
    change = torch.zeros(1, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), UNKNOWN_CHANGE)
    target[0, 0, 0] = 0
    target[0, 0, 1] = IGNORE_INDEX
    mask_loss(classes, target, IGNORE_INDEX, 1.0, change).backward()
    class_grad = classes.grad.abs().sum(1)[0]
    assert class_grad[0, 0] > 0 and class_grad[1:].sum() == 0 and class_grad[0, 1] == 0
    assert change.grad[0, 1:].abs().min() > 0 and change.grad[0, 0, 1] == 0  # ignored pixel: no gradient


def test_a_model_with_a_change_head_saves_and_loads_it(tmp_path):
    from changescope.models.change_model import ChangeModel
    from changescope.models.hub import from_pretrained, save_pretrained
    from changescope.models.presets import build_config
    from changescope.models.processor import ChangeProcessor

    config = build_config(
        "lite", 0, classes=["background", "building"], backbone_pretrained=False, image_size=64, gsd=[0.5, 10]
    )
    model = ChangeModel(config).eval()
    assert model.change_head is not None
    save_pretrained(model, ChangeProcessor(None, 64, 24), tmp_path / "m")
    loaded, _ = from_pretrained(tmp_path / "m")
    pair = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pair).mask_logits, model(pair).mask_logits)
    assert loaded.config.gsd == [0.5, 10]


# -- tiles and mixes ------------------------------------------------------------------------------------


def test_tiles_cover_a_large_pair_at_its_own_resolution_and_pad_small_ones(tmp_path):
    from changescope.data.mix import TiledPairs, tile_starts
    from changescope.data.readers import open_dataset

    assert tile_starts(150, 64, 64) == [0, 64, 86] and tile_starts(40, 64, 64) == [0]
    dataset = open_dataset(binary_folder(tmp_path / "cd"), "train", "folder")
    tiles = TiledPairs(dataset, tile=64)
    assert len(tiles) == 3 * 2 * 3  # rows [0, 36] x cols [0, 64, 86] per pair
    first, source = tiles[0], dataset[0]
    assert first["id"] == f"{source['id']}@0,0" and first["image"].shape == (2, 3, 64, 64)
    torch.testing.assert_close(first["image"], source["image"][..., :64, :64])
    last = tiles[5]
    torch.testing.assert_close(last["mask"], source["mask"][36:, 86:])
    half = TiledPairs(dataset, tile=64, scale=0.5)  # 50 x 75: one row, two columns, the row padded
    sample = half[0]
    assert len(half) == 3 * 2 and sample["image"].shape == (2, 3, 64, 64)
    assert (sample["mask"][50:] == IGNORE_INDEX).all() and (sample["image"][..., 50:, :] == 0).all()


def test_a_mix_file_joins_class_data_and_binary_data(tmp_path, synth):
    from changescope.data.mix import MixedPairs
    from changescope.metrics.threshold import SourceIndex

    binary_folder(tmp_path / "cd")
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"tile: 64\nsources:\n  - {synth}\n  - path: cd\n    format: folder\n    repeat: 2\n")
    dataset = MixedPairs(mix, "train")
    assert dataset.classes[0] == "background" and len(dataset.classes) == 5  # SynthChange's classes
    synth_train = sum(1 for p in (synth / "images/train/A").iterdir())
    assert len(dataset) == synth_train + 2 * 18
    tile = dataset[len(dataset) - 1]
    values = set(tile["mask"].unique().tolist())
    assert values <= {0, UNKNOWN_CHANGE} and UNKNOWN_CHANGE in values | {UNKNOWN_CHANGE}
    assert any(UNKNOWN_CHANGE in dataset[i]["mask"] for i in range(synth_train, len(dataset)))
    # each entry names its source, so training calibrates the change threshold per source
    sources = SourceIndex.of_dataset(dataset)
    assert sources.count == 2 and sources.names[1].endswith("cd")
    assert {sources.of(e.id) for e in dataset.entries[synth_train:]} == {1}
    assert {sources.of(e.id) for e in dataset.entries[:synth_train]} == {0}


def test_a_source_kept_out_of_validation_still_sets_the_class_list(tmp_path, synth):
    from changescope.data.mix import MixedPairs

    binary_folder(tmp_path / "cd")
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        f"tile: 64\nsources:\n  - path: {synth}\n    val: false\n  - path: cd\n    format: folder\n"
    )
    train, val = MixedPairs(mix, "train"), MixedPairs(mix, "val")
    assert train.classes == val.classes and len(val.classes) == 5
    assert len(val) == 2 * 6 and all(not e.captions for e in val.entries)  # only the binary tiles
    assert any(UNKNOWN_CHANGE in val[i]["mask"] for i in range(len(val)))


def test_described_tiles_get_the_sentence_of_their_own_label(tmp_path, synth):
    """``describe: true``: each binary tile is captioned from its label (how real pairs train retrieval)."""
    from changescope.data.mix import MixedPairs
    from changescope.models.processor import ChangeProcessor
    from changescope.tasks.consistency import NO_CHANGE_SENTENCE
    from changescope.tasks.data import CaptionPairs, describe_mask

    binary_folder(tmp_path / "cd")
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"tile: 64\nsources:\n  - {synth}\n  - path: cd\n    format: folder\n    describe: true\n")
    dataset = MixedPairs(mix, "train")
    pairs = CaptionPairs(dataset, ChangeProcessor(None, 64, 42), train=True, seed=0)
    synth_train = len(dataset.parts[0])
    assert all(pairs[i]["captions"] == dataset[i]["captions"] for i in range(3))  # captioned: as they are
    sentences = []
    for i in range(synth_train, len(dataset)):
        item, mask = pairs[i], dataset[i]["mask"]
        assert item["captions"] == [describe_mask(mask)] and item["caption"] == item["captions"][0]
        assert item["changed"] == (item["captions"][0] != NO_CHANGE_SENTENCE)
        sentences.append(item["captions"][0])
    # the square of pair 0 lies in the top-left tile, most tiles hold no change
    assert "a changed area has appeared at the top left" in sentences and NO_CHANGE_SENTENCE in sentences
    square = torch.zeros(64, 64, dtype=torch.uint8)
    square[40:60, 40:60] = UNKNOWN_CHANGE  # class-less change counts; unlabelled pixels do not
    assert describe_mask(square) == "a changed area has appeared at the bottom right"
    assert describe_mask(torch.full((64, 64), 255, dtype=torch.uint8)) == NO_CHANGE_SENTENCE

    mix.write_text(f"tile: 64\nsources:\n  - path: {synth}\n    describe: true\n")
    with pytest.raises(DataError, match="describe is for caption-less data") as err:
        MixedPairs(mix, "train")
    assert str(mix) in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources:\n  - path: x\n    describe: 1\n", "describe must be true or false"),
        ("sources: []\n", "non-empty list"),
        ("sources:\n  - path: x\n    repeat: 0\n", "repeat must be an integer"),
        ("sources:\n  - path: x\n    weight: 2\n", "unknown keys"),
        ("tile: 64\nsauces: []\n", "needs .sources."),
        ("sources: [unclosed\n", "not a readable mix file"),
    ],
)
def test_a_bad_mix_file_is_one_line_naming_it(tmp_path, text, message):
    from changescope.data.mix import MixedPairs

    mix = tmp_path / "mix.yaml"
    mix.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        MixedPairs(mix, "train")
    assert str(mix) in str(err.value) and "\n" not in str(err.value)


# -- inference at the input's resolution ----------------------------------------------------------------


def test_large_pairs_are_mapped_tile_by_tile_not_shrunk():
    from changescope.models.change_model import ChangeModel
    from changescope.models.presets import build_config
    from changescope.models.processor import ChangeProcessor
    from changescope.tasks.detection import mask_probabilities

    config = build_config(
        "lite", 0, classes=["background", "change"], backbone_pretrained=False, image_size=64
    )
    model, processor = ChangeModel(config).eval(), ChangeProcessor(None, 64, 24)
    pair = torch.rand(2, 3, 64, 128)
    probs = mask_probabilities(model, processor, pair, overlap=0)
    assert probs.shape == (2, 64, 128)
    with torch.no_grad():
        left = model(pair[None, ..., :64]).mask_logits.softmax(1)[0]
        right = model(pair[None, ..., 64:]).mask_logits.softmax(1)[0]
    torch.testing.assert_close(probs, torch.cat([left, right], dim=-1))
    torch.testing.assert_close(mask_probabilities(model, processor, pair).sum(0), torch.ones(64, 128))


def test_inputs_are_resampled_only_when_their_gsd_is_far_from_the_trained_ones():
    from changescope.tasks.detection import working_scale

    class Model:
        class config:  # noqa: N801 - stands in for a ModelConfig
            gsd = [0.5, 10.0]

    assert working_scale(Model, None) == 1.0 and working_scale(Model, 0.6) == 1.0
    assert working_scale(Model, 12.0) == 1.0
    assert working_scale(Model, 2.0) == pytest.approx(4.0)  # nearest 0.5 m: enlarge 4x
    assert working_scale(Model, 60.0) == pytest.approx(6.0)  # nearest 10 m
    Model.config.gsd = None
    assert working_scale(Model, 2.0) == 1.0


# -- captions that agree with masks ---------------------------------------------------------------------


def test_no_change_sentences_are_recognised_and_change_sentences_are_not():
    from changescope.data.readers.levir import LEVIR_NO_CHANGE
    from changescope.tasks.consistency import says_no_change

    assert all(says_no_change(s) for s in LEVIR_NO_CHANGE)
    assert says_no_change("The scene remains unchanged.")
    for text in ("two buildings have been built at the top", "a road is built along the trees", "", None):
        assert not says_no_change(text)


def test_a_no_change_caption_gives_way_to_the_mask_objects():
    from changescope.postprocess import summarize_mask
    from changescope.tasks.consistency import agrees, caption_from_mask, reconcile

    mask = np.zeros((90, 90), np.uint8)
    mask[2:20, 2:20] = 2  # a large building at the top left
    mask[70:75, 40:45] = 2
    mask[50:52, 60:80] = 1
    summary = summarize_mask(mask, ["background", "road", "building"])
    sentence = caption_from_mask(summary)
    assert sentence == "two buildings have changed at the top left and a road changed nearby"
    fixed = reconcile("the two scenes seem identical", summary)
    assert fixed.source == "mask" and fixed.caption == sentence
    assert reconcile("a house was built", summary).source == "model"
    empty = summarize_mask(np.zeros((8, 8), np.uint8), ["background", "change"])
    assert caption_from_mask(empty) is None and reconcile("no change has occurred", empty).source == "model"
    assert agrees("no change has occurred", empty) and not agrees("the two scenes seem identical", summary)
    binary = summarize_mask((mask > 0).astype(np.uint8), ["background", "change"])
    assert caption_from_mask(binary) == "three changed areas have appeared at the top left"


# -- fine-tuning a trained model on binary pairs, through the command -----------------------------------


def test_fine_tuning_with_init_keeps_the_other_heads_and_learns_a_change_head(tmp_path, synth):
    from safetensors.torch import load_file

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML.replace("{channels: 16}\n", "{}\n"))  # a model without a change head
    cli("train", "--config", config, "--data", synth, "--out", tmp_path / "base")
    base = tmp_path / "base" / "model"
    assert json.loads((base / "config.json").read_text())["change_head_kwargs"] == {}

    out = tmp_path / "tuned"
    data = binary_folder(tmp_path / "cd")
    run = cli(
        "train",
        "--config",
        config,
        "--data",
        data,
        "--out",
        out,
        "--init",
        base,
        "--tasks",
        "mask",
        "--gsd",
        "1.5",
        "--monitor",
        "change_F1",
        "--lr",
        "1e-3",
    )
    assert "kept fixed: encoder, decoder" in run.stdout
    tuned = json.loads((out / "model" / "config.json").read_text())
    assert tuned["classes"] == json.loads((base / "config.json").read_text())["classes"]
    assert tuned["change_head_kwargs"] and tuned["gsd"] == [1.5] and tuned["vocab_size"] > 0
    old, new = load_file(str(base / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    for name in old:
        if name.startswith(("decoder.", "encoder.")):  # kept fixed, batch-norm statistics included
            torch.testing.assert_close(new[name], old[name], msg=name)
    assert any(name.startswith("change_head.") for name in new)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= row["val/change_F1"] <= row["val/change_F1_cal"] + 1e-6 <= 1 + 1e-6
    assert tuned["change_threshold"] == pytest.approx(row["val/change_threshold"])  # calibrated, saved
    assert 0 < tuned["change_threshold"] < 1

    a, b = data / "val/A/val_0.png", data / "val/B/val_0.png"
    result = json.loads(cli("detect", out, a, b, "--json", "--gsd", "1.5").stdout)
    assert result["caption_source"] in ("model", "mask") and result["model_gsd"] == [1.5]
    assert result["change_head"] == "change_head"  # one head, trained on these pairs
    assert result["size"] == [150, 100]
    evaluated = json.loads(cli("evaluate", out, "--data", data, "--split", "val", "--json").stdout)
    assert evaluated["detection"]["binary"] and evaluated["detection"]["classes"] == ["background", "change"]


# -- the real pairs of ../shared/realdata ---------------------------------------------------------------


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata (the real labelled pairs) is absent")
def test_the_training_mix_of_the_default_reads_every_real_source():
    from changescope.data.mix import read_mix

    mix = Path(__file__).resolve().parents[1] / "benchmarks" / "mixes" / "realdata.yaml"
    spec = read_mix(mix)
    real = [s for s in spec["sources"] if "realdata" in s.path]
    # the mix names them beside this checkout; a CI clone elsewhere finds them in REALDATA by folder name
    parts = [Path(s.path).parts for s in real]
    folders = [REALDATA.joinpath(*p[p.index("realdata") + 1 :]) for p in parts]
    assert len(real) == 5 and all(f.is_dir() for f in folders), folders
    from changescope.data.readers import open_dataset

    for source, folder in zip(real, folders, strict=True):
        train, val = (open_dataset(folder, split, source.format) for split in ("train", "val"))
        assert len(train) and len(val), source.path
        assert not {e.id for e in train.entries} & {e.id for e in val.entries}


def test_a_scene_region_never_keeps_a_no_change_caption():
    from changescope.tasks.consistency import region_caption, says_no_change

    for name in ("change", "building", "road", "tree", "water"):
        assert not says_no_change(region_caption(name))
    assert region_caption("change") == "a changed area has appeared here"


def test_scenes_far_from_the_trained_gsd_are_read_in_larger_or_smaller_tiles():
    rasterio = pytest.importorskip("rasterio")
    from affine import Affine

    from changescope.geo.raster import pixel_size_m
    from changescope.tasks.scene import SceneOptions, _resolution

    utm = rasterio.crs.CRS.from_epsg(32633)
    assert pixel_size_m(utm, Affine(2, 0, 500000, 0, -2, 5000000), 100, 100) == 2.0
    wgs84 = rasterio.crs.CRS.from_epsg(4326)
    at_60n = pixel_size_m(wgs84, Affine(1e-4, 0, 10, 0, -1e-4, 60.005), 100, 100)
    assert at_60n == pytest.approx((1e-4 * 0.5 + 1e-4) / 2 * 111_320, rel=1e-3)

    class Model:
        class config:  # noqa: N801 - stands in for a ModelConfig
            gsd, image_size = [0.5], 256

        @staticmethod
        def change_head_name(gsd):  # as ChangeModel's with a coarse head from 5 m
            return "coarse_change_head" if gsd is not None and gsd >= 5 else "change_head"

    class Pair:
        crs, transform, width, height, georeferenced = utm, Affine(2, 0, 0, 0, -2, 0), 4096, 4096, True

    res = _resolution(Model, Pair, SceneOptions())
    assert res["gsd_m"] == 2.0 and res["resampled_by"] == 4.0 and res["change_head"] == "change_head"
    assert res["tile_source_px"] == 64 and res["overlap_source_px"] == 8
    same = _resolution(Model, Pair, SceneOptions(gsd=0.6))
    assert same["resampled_by"] == 1.0 and same["tile_source_px"] == 256 and same["gsd_source"] == "--gsd"


def test_an_answer_never_denies_a_change_the_mask_shows():
    from types import SimpleNamespace

    from changescope.tasks.vqa import _agree_with_mask

    logits = torch.zeros(1, 3, 32, 32)
    logits[0, 0] = 1.0
    logits[0, 2, 4:14, 4:14] = 5.0  # a 10 x 10 building
    classes = ["background", "road", "building"]
    out = SimpleNamespace(mask_logits=logits)

    def mask_of():
        return out.mask_logits[0].argmax(0).to(torch.uint8).numpy()

    closed = {"answer": "no", "type": "change_or_not", "free_form": False}
    assert _agree_with_mask(classes, mask_of, closed, 10) == {
        "answer_source": "mask",
        "answer": "yes",
        "model_answer": "no",
    }
    free = {"answer": "the two scenes seem identical", "type": "open", "free_form": True}
    fixed = _agree_with_mask(classes, mask_of, free, 10)
    assert fixed["answer"] == "a building has changed at the top left" and fixed["answer_source"] == "mask"
    assert _agree_with_mask(classes, mask_of, {**closed, "answer": "yes"}, 10) == {"answer_source": "model"}
    out.mask_logits = torch.zeros(1, 3, 32, 32).index_fill_(1, torch.tensor([0]), 1.0)
    assert _agree_with_mask(classes, mask_of, closed, 10) == {"answer_source": "model"}


def test_a_frozen_packaged_backbone_stays_out_of_the_weights_file(tmp_path):
    from safetensors import safe_open

    from changescope.models.change_model import ChangeModel
    from changescope.models.hub import from_pretrained, save_pretrained
    from changescope.models.presets import build_config
    from changescope.models.processor import ChangeProcessor

    config = build_config(
        "lite", 0, classes=["background", "change"], image_size=64, encoder_kwargs={"d_model": 32}
    )
    model = ChangeModel(config).eval()
    processor = ChangeProcessor(None, 64, 24)
    save_pretrained(model, processor, tmp_path / "m", backbone="package")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if k.startswith("backbone.")]
    loaded, _ = from_pretrained(tmp_path / "m")
    pair = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pair).mask_logits, model(pair).mask_logits)
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="differs from the packaged weights"):
        save_pretrained(model, processor, tmp_path / "other", backbone="package")


def test_a_mix_calibrates_its_change_threshold_on_the_mean_of_its_sources(tmp_path, synth):
    binary_folder(tmp_path / "cd")
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"tile: 64\nsources:\n  - {synth}\n  - path: cd\n    format: folder\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML)
    out = tmp_path / "run"
    cli("train", "--config", config, "--data", mix, "--out", out, "--tasks", "mask", "--epochs", "1")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    per_source = {k: v for k, v in row.items() if k.startswith("val/change_F1_cal/")}
    assert set(per_source) == {f"val/change_F1_cal/{synth.name}", "val/change_F1_cal/cd"}
    assert row["val/change_F1_cal"] == pytest.approx(sum(per_source.values()) / 2, abs=1e-6)
    saved = json.loads((out / "model" / "config.json").read_text())["change_threshold"]
    assert saved == pytest.approx(row["val/change_threshold"])


def test_fine_tuning_a_model_with_two_change_heads_trains_one_head_for_every_input(tmp_path):
    from test_change_model import _two_heads

    from changescope.models.change_bands import with_coarse_head, with_gsd_probe
    from changescope.models.change_model import ChangeModel
    from changescope.models.hub import save_pretrained
    from changescope.models.processor import ChangeProcessor
    from changescope.tasks.train_options import FREEZABLE, TrainOptions
    from changescope.tasks.training import _keep_init_heads

    fine, coarse = _two_heads()
    joined = with_coarse_head(fine, coarse, 5.0)
    features = 2 * sum(joined.backbone.channels[-2:])
    joined = with_gsd_probe(joined, torch.zeros(features), torch.tensor(1.0))
    banded = save_pretrained(joined, ChangeProcessor(None, 64, 12), tmp_path / "m")
    # a mask run: the user's pairs train the one change head, used at every GSD (no probe to pick one)
    options = TrainOptions(data=str(tmp_path), out=str(tmp_path / "run"), init=str(banded), tasks="mask")
    merged, _ = _keep_init_heads(options, fine.config, None, ("mask",))
    assert merged.coarse_gsd is None and merged.change_head_kwargs == fine.config.change_head_kwargs
    assert not merged.gsd_probe and ChangeModel(merged).gsd_probe is None
    # a run that trains no mask: both heads and the probe kept as they are
    kept, _ = _keep_init_heads(options, fine.config, None, ("retrieval",))
    assert kept.coarse_gsd == 5.0 and kept.coarse_change_threshold == 0.3 and kept.gsd_probe
    assert "gsd_probe" in FREEZABLE["change_head"]


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata (the real labelled pairs) is absent")
def test_the_defaults_gsd_probe_tells_held_out_sentinel2_from_aerial_pairs():
    from changescope.data.readers import open_dataset
    from changescope.tasks.detection import head_for_pair
    from changescope.tasks.inference import load

    model, processor, _ = load("default", "fp32", 1)
    assert model.gsd_probe is not None
    oscd = open_dataset(REALDATA / "oscd-test10-labels", "test", "oscd")[0]["image"]  # larger than a tile
    egy = open_dataset(REALDATA / "egy-bcd-ncc-samples" / "NCC samples", "test", "folder")[0]["image"]
    with torch.no_grad():
        assert head_for_pair(model, processor, oscd) is True
        assert head_for_pair(model, processor, oscd, gsd=0.5) is None  # a given GSD decides
        assert model(processor.resize(egy)[None]).coarse.tolist() == [False]


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata (the real labelled pairs) is absent")
def test_a_scene_of_unknown_gsd_reads_the_head_its_probe_picks_for_every_tile(tmp_path):
    from PIL import Image

    import changescope
    from changescope.data.readers import open_dataset

    pair = open_dataset(REALDATA / "oscd-test10-labels", "test", "oscd")[0]["image"]  # Sentinel-2, 10 m
    paths = []
    for t, name in ((0, "a.png"), (-1, "b.png")):  # plain PNGs: no georeference, no GSD
        rgb = (pair[t].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(rgb).save(tmp_path / name)
        paths.append(tmp_path / name)
    summary = changescope.load("default", precision="fp32", tta=1).scene(*paths, out=tmp_path / "out")
    resolution = summary["resolution"]
    assert resolution["gsd_m"] is None and resolution["change_head_source"] == "GSD probe"
    assert resolution["change_head"] == "coarse_change_head"


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata (the real labelled pairs) is absent")
def test_describe_ask_and_detect_agree_on_a_real_pair_larger_than_the_model():
    import changescope

    city = REALDATA / "oscd-test10-labels/FCN_version/dataset/OSCD/original_data/testing/valencia/pair"
    before, after = city / "img1.png", city / "img2.png"  # 10 m, larger than 256 px: mapped tile by tile
    model = changescope.load("default", precision="fp32")  # its 4 views
    found = model.detect(before, after)
    assert found.result["objects"] > 0  # small changes, lost when the whole city is shrunk to 256 px
    # describe checks its caption against the same mask: never "no change" where detect finds objects
    assert model.describe(before, after) == found.result["caption"]
    # and so does ask: no "no" to whether anything changed
    assert model.ask(before, after, "Is there any change?").result["answer"] == "yes"
