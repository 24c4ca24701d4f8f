"""Change question answering and grounding: encoders, heads, training through the real `changescope` command
(SynthChange and CDVQA), `changescope ask`, `changescope evaluate`, the answer space through
save_pretrained / from_pretrained, and the shipped model on fresh SynthChange pairs.

The CLI model is tiny (hashed-word question encoder, narrow layers, 64 px, one epoch), so its answers are
not meaningful: those tests check the plumbing; the shipped-model tests check quality.
"""

import json
import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_cli import cli

from changescope.errors import ChangescopeError

VQA_YAML = """\
preset: lite-words
epochs: 1
batch_size: 16
min_freq: 1
image_size: 64
pretrained: false
seed: 3
tasks: caption,mask,vqa,grounding
overrides:
  encoder_kwargs: {d_model: 32, num_layers: 1, num_heads: 4}
  decoder_kwargs: {d_model: 32, num_layers: 1, num_heads: 4, ffn_dim: 64, max_len: 24}
  mask_head_kwargs: {channels: 16}
  question_kwargs: {buckets: 512, dim: 32}
  query_kwargs: {num_layers: 1, num_heads: 4}
"""


@pytest.fixture(scope="module")
def vqa_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "vqa.yaml"
    path.write_text(VQA_YAML)
    return path


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory, synth, vqa_config):
    out = tmp_path_factory.mktemp("vqa") / "run"
    cli("train", "--config", vqa_config, "--data", synth, "--out", out)
    return out


def _test_pair(synth, index=0):
    a = sorted((synth / "images" / "test" / "A").iterdir())[index]
    return a, synth / "images" / "test" / "B" / a.name


def _records(root, split, task):
    from changescope.tasks.queries import load_records

    return [r for r in load_records(root, split) if r.task == task]


# -- questions --------------------------------------------------------------------------------------


def test_check_question_refuses_empty_long_and_non_utf8():
    from changescope.tasks.vqa import check_question

    assert check_question("  how many   buildings\nwere built? ") == "how many buildings were built?"
    assert check_question("où ?".encode()) == "où ?"
    for bad, match in (
        ("", "empty"),
        (" \t\n", "empty"),
        ("x" * 513, "513 characters long; the limit is 512"),
        ("caf\udcff", "not valid UTF-8"),  # how Python hands over non-UTF-8 argv bytes
        (b"\xff\xfe", "not valid UTF-8"),
        (None, "must be text"),
    ):
        with pytest.raises(ChangescopeError, match=match):
            check_question(bad)


def test_hashed_words_are_stable_and_padded():
    from changescope.models.question_encoder import HashedWordEncoder, word_bucket

    # crc32, not Python's salted hash: the same bucket in every process (a saved model depends on it)
    assert word_bucket("building", 4096) == 1 + zlib.crc32(b"building") % 4095
    code = "from changescope.models.question_encoder import word_bucket; print(word_bucket('building', 4096))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == word_bucket("building", 4096)
    encoder = HashedWordEncoder(buckets=64, dim=8, num_heads=2).eval()
    tokens, pad = encoder(["were trees cut?", "", "show the new road please"])
    assert tokens.shape == (3, 5, 8)
    assert pad.tolist()[0] == [False, False, False, True, True]
    assert pad.tolist()[1] == [False, True, True, True, True]  # an empty text keeps one position


def test_minilm_encoder_is_the_packaged_model_frozen_cached_and_not_saved(tmp_path):
    from changescope.models.change_model import ChangeModel
    from changescope.models.hub import from_pretrained, save_pretrained
    from changescope.models.presets import build_config
    from changescope.models.processor import ChangeProcessor

    config = build_config(
        "lite",
        0,
        backbone_pretrained=False,
        image_size=64,
        encoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4},
        answers=["no", "yes"],
        qtypes=["change_or_not"],
        answer_types={"change_or_not": [0, 1]},
    )
    model = ChangeModel(config).eval()
    encoder = model.question_encoder
    text, pad = encoder(["has anything changed?", "were trees cut down?"])
    assert text.shape[0] == 2 and text.shape[2] == 384 and encoder.out_dim == 384
    # the real sentence encoder: similar questions are closer than unrelated ones
    emb = [encoder([q])[0][0].mean(0) for q in ("were trees cut?", "were the trees removed?", "is it sunny?")]
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) > cos(emb[0], emb[2], dim=0)
    assert set(encoder._cache) >= {"has anything changed?", "were trees cut down?"}
    assert not [k for k in model.state_dict() if k.startswith("question_encoder")]
    assert not [n for n, p in model.named_parameters() if n.startswith("question_encoder")]

    images = torch.rand(1, 2, 3, 64, 64)
    q = ["has anything changed?"]
    with torch.no_grad():
        before = model.answer_logits(model.read_queries(model(images).memory, q, torch.tensor([0])))
    save_pretrained(model, ChangeProcessor(None, 64, 42), tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["question_encoder"] == "minilm"
    loaded, _ = from_pretrained(tmp_path / "m")
    with torch.no_grad():
        after = loaded.answer_logits(loaded.read_queries(loaded(images).memory, q, torch.tensor([0])))
    for x, y in zip(before, after, strict=True):
        torch.testing.assert_close(x, y)


def test_minilm_can_be_fine_tuned_and_is_then_saved_with_the_model():
    from changescope.models.question_encoder import MiniLMEncoder

    encoder = MiniLMEncoder(finetune=True)
    assert any(p.requires_grad for p in encoder.parameters())
    assert any(k.startswith("model.") for k in encoder.state_dict())
    text, pad = encoder(["were trees cut?"])
    text.mean().backward()  # gradients reach the sentence encoder
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None


def _tiny_model(vocab_size=0, **overrides):
    from changescope.models.change_model import ChangeModel
    from changescope.models.presets import build_config

    values = dict(
        backbone_pretrained=False,
        image_size=64,
        encoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4},
        question_kwargs={"buckets": 64, "dim": 16},
        query_kwargs={"num_layers": 1, "num_heads": 4},
        answers=["0", "1", "no", "yes"],
        qtypes=["change_or_not", "count", "open"],
        answer_types={"change_or_not": [2, 3], "count": [0, 1], "open": []},
    )
    values.update(overrides)
    return ChangeModel(build_config("lite-words", vocab_size, **values)).eval()


def test_answers_are_chosen_among_those_of_the_predicted_type():
    model = _tiny_model()
    types = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    # the best answer overall is "0" (a count) in every row
    answers = torch.tensor([[9.0, 1.0, 2.0, 3.0]] * 3)
    t, a, conf = model.pick_answers(types, answers)
    assert t.tolist() == [0, 1, 2]
    assert a.tolist() == [3, 0, -1]  # yes/no question -> "yes"; count -> "0"; open -> no closed answer
    expected0 = torch.softmax(types[0], 0)[0] * torch.softmax(torch.tensor([2.0, 3.0]), 0)[1]
    assert conf[0].item() == pytest.approx(expected0.item(), rel=1e-5)
    assert conf[2].item() == 0


def test_grounding_loss_handles_negative_queries_and_rewards_the_target():
    from changescope.models.heads.query_heads import grounding_loss

    target = torch.zeros(2, 8, 8, dtype=torch.uint8)
    target[0, 2:5, 2:5] = 1  # the second query is negative (empty target)
    perfect = (target.float() * 2 - 1) * 20
    assert grounding_loss(perfect, target).item() < 0.01
    assert torch.isfinite(grounding_loss(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)))
    assert grounding_loss(-perfect, target) > grounding_loss(torch.zeros(2, 8, 8), target)


def test_grounding_only_model_has_a_fused_map_but_no_mask_classes():
    model = _tiny_model(answers=[], qtypes=[], answer_types={}, grounding=True)
    assert model.tasks == ("grounding",)
    out = model(torch.rand(2, 2, 3, 64, 64), pixels=True)
    assert out.mask_logits is None and out.pixels.shape[:2] == (2, 64)
    query = model.read_queries(out.memory, ["show the new road"], torch.tensor([1]))
    assert model.ground(out, query, (64, 64)).shape == (1, 64, 64)
    with pytest.raises(ChangescopeError, match="no question-answering head"):
        model.answer_logits(query)


def test_init_weights_keep_the_rows_of_a_grown_vocabulary(tmp_path):
    from changescope.data.text import Vocabulary
    from changescope.models.hub import save_pretrained
    from changescope.models.processor import ChangeProcessor
    from changescope.tasks.training import load_init_weights

    old_vocab = Vocabulary(["a", "b", "c"])
    old = _tiny_model(
        vocab_size=len(old_vocab), decoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4}
    )
    save_pretrained(old, ChangeProcessor(old_vocab, 64, 42), tmp_path / "old")
    new = _tiny_model(vocab_size=9, decoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4})
    counts = load_init_weights(new, str(tmp_path / "old"))
    assert counts["grown"] >= 1 and counts["skipped"] == 0
    name = next(k for k, v in old.state_dict().items() if v.dim() == 2 and v.shape[0] == len(old_vocab))
    torch.testing.assert_close(new.state_dict()[name][: len(old_vocab)], old.state_dict()[name])


# -- training, asking, evaluating through the CLI ---------------------------------------------------


def test_training_learns_the_answer_space_of_the_train_records(vqa_run, synth):
    run = json.loads((vqa_run / "run.json").read_text())
    train = _records(synth, "train", "vqa")
    config = json.loads((vqa_run / "model" / "config.json").read_text())
    assert config["answers"] == sorted({r.answer for r in train})
    assert config["qtypes"] == sorted({r.qtype for r in train}) + ["open"]
    for qtype, ids in config["answer_types"].items():
        assert {config["answers"][i] for i in ids} == {r.answer for r in train if r.qtype == qtype}
    assert config["grounding"] is True and run["options"]["tasks"] == "caption,mask,vqa,grounding"
    assert run["options"]["monitor"] == "CIDEr-D+mIoU_no_bg+vqa_OA+grounding_mIoU"
    metrics = [json.loads(line) for line in (vqa_run / "metrics.jsonl").read_text().splitlines()]
    assert {"val/vqa_OA", "val/vqa_AA", "val/grounding_mIoU", "val/grounding_cIoU"} <= set(metrics[-1])
    # free-form answers are decoded with the caption vocabulary: every answer word is in it
    words = set(json.loads((vqa_run / "model" / "vocab.json").read_text())["words"])
    assert {w for r in train for w in r.answer.replace("_", " ").split()} <= words


def test_answer_space_round_trips_through_save_and_load(vqa_run, tmp_path, synth):
    from changescope.models.hub import from_pretrained, save_pretrained
    from changescope.tasks.vqa import ask_pair

    model, processor = from_pretrained(vqa_run / "model")
    save_pretrained(model, processor, tmp_path / "copy")
    again, again_processor = from_pretrained(tmp_path / "copy")
    for key in ("answers", "qtypes", "answer_types", "grounding", "question_encoder"):
        assert getattr(again.config, key) == getattr(model.config, key)
    a, b = _test_pair(synth)
    first = ask_pair(model, processor, a, b, "how many buildings were built?")
    second = ask_pair(again, again_processor, a, b, "how many buildings were built?")
    assert first.result == second.result
    np.testing.assert_array_equal(first.mask, second.mask)


def test_ask_prints_and_writes_answer_mask_and_overlay(vqa_run, synth, tmp_path):
    a, b = _test_pair(synth)
    out = tmp_path / "ask"
    proc = cli("ask", vqa_run, a, b, "where were trees cleared?", "--out", out, "--json")
    result = json.loads(proc.stdout)
    assert set(result) >= {
        "question",
        "answer",
        "type",
        "free_form",
        "confidence",
        "closed_answer",
        "grounding",
    }
    assert result["type"] in json.loads((vqa_run / "model" / "config.json").read_text())["qtypes"]
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == np.asarray(Image.open(a)).shape[:2] and set(np.unique(mask)) <= {0, 255}
    g = result["grounding"]
    assert g["pixels"] == int((mask == 255).sum()) and g["empty"] == (g["pixels"] == 0)
    assert all(0 <= v <= 1 for box in g["boxes"] for v in box)
    assert json.loads((out / "answer.json").read_text()) == result
    assert Image.open(out / "overlay.png").size == Image.open(a).size
    plain = cli("ask", vqa_run, a, b, "where were trees cleared?")
    assert plain.stdout.splitlines()[0].startswith(str(result["answer"]))


def test_free_form_answers_are_marked(vqa_run, synth, monkeypatch):
    import changescope.tasks.vqa as vqa
    from changescope.models.hub import from_pretrained

    model, processor = from_pretrained(vqa_run / "model")
    a, b = _test_pair(synth)
    monkeypatch.setattr(vqa, "FREE_FORM_BELOW", 1.01)  # no closed answer is confident enough
    unsure = vqa.ask_pair(model, processor, a, b, "what did the grass become?").result
    assert unsure["free_form"] is True and unsure["closed_answer"] is not None
    monkeypatch.setattr(vqa, "FREE_FORM_BELOW", 0.0)
    sure = vqa.ask_pair(model, processor, a, b, "what did the grass become?").result
    assert sure["free_form"] == (sure["type"] == "open")
    if not sure["free_form"] and sure.get("answer_source", "model") == "model":
        assert sure["answer"] == sure["closed_answer"]


def test_bad_questions_are_one_line_errors_and_write_nothing(vqa_run, synth, tmp_path):
    a, b = _test_pair(synth)
    out = tmp_path / "out"
    for question in ("", "   ", "y" * 600):
        proc = cli("ask", vqa_run, a, b, question, "--out", out, check=False)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
        assert proc.stderr.startswith("error: the question")
    # bytes that are not UTF-8 on the command line
    raw = subprocess.run(
        [sys.executable, "-m", "changescope", "ask", str(vqa_run), str(a), str(b), b"caf\xe9?"],
        capture_output=True,
        text=True,
    )
    assert raw.returncode == 1 and "not valid UTF-8" in raw.stderr and len(raw.stderr.splitlines()) == 1
    assert not out.exists()
    missing = cli("ask", vqa_run, a, tmp_path / "nope.png", "what changed?", check=False)
    assert missing.returncode == 1 and "nope.png" in missing.stderr


def test_models_without_the_heads_refuse_to_answer(tmp_path, synth):
    from changescope.tasks.inference import load
    from changescope.tasks.vqa import ask_pair

    model, processor, _ = load("default")
    if "vqa" in model.tasks:
        model.answer_head = None  # a caption / mask model (the shipped one answers)
        model.grounding_head = None
    a, b = _test_pair(synth)
    with pytest.raises(ChangescopeError, match="no question-answering head"):
        ask_pair(model, processor, a, b, "has anything changed?")


def test_evaluate_reports_vqa_and_grounding(vqa_run, synth):
    proc = cli("evaluate", vqa_run, "--data", synth, "--split", "test", "--json", "--no-meteor")
    result = json.loads(proc.stdout)
    test = _records(synth, "test", "vqa")
    vqa = result["vqa"]
    assert set(vqa) >= {"OA", "AA", "per_type"} and vqa["n"] == len(test)
    assert vqa["counts"] == dict(sorted(Counter(r.qtype for r in test).items()))
    assert vqa["OA"] == pytest.approx(
        sum(vqa["per_type"][t] * n for t, n in vqa["counts"].items()) / vqa["n"]
    )
    assert vqa["AA"] == pytest.approx(sum(vqa["per_type"].values()) / len(vqa["per_type"]))
    assert 0 <= result["grounding"]["mIoU"] <= 1 and 0 <= result["grounding"]["cIoU"] <= 1
    assert result["grounding"]["n"] == len(_records(synth, "test", "grounding"))
    assert "CIDEr-D" in result and "detection" in result
    # --limit: the split's first pairs and only their questions
    table = cli("evaluate", vqa_run, "--data", synth, "--split", "test", "--no-meteor", "--limit", "3").stdout
    assert "change question answering" in table and "grounding: mIoU" in table and "AA" in table
    assert "3 pairs, split 'test'" in table


# slow (22 s, a training run): question training is also run on SynthChange records above; the CDVQA
# reader has its own tests; `make test-all` runs this one
@pytest.mark.slow
def test_cdvqa_trains_and_evaluates_questions_only(tmp_path, vqa_config):
    from data.make_fixtures import make_cdvqa

    root = make_cdvqa(tmp_path / "cdvqa")
    out = tmp_path / "run"
    cli("train", "--config", vqa_config, "--tasks", "vqa", "--data", root, "--out", out)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["vocab_size"] == 0 and config["classes"] == [] and "open" not in config["qtypes"]
    result = json.loads(cli("evaluate", out, "--data", root, "--split", "test", "--json").stdout)
    assert result["tasks"] == ["vqa"] and "CIDEr-D" not in result and result["vqa"]["n"] > 0
    wrong = cli(
        "train",
        "--config",
        vqa_config,
        "--tasks",
        "caption",
        "--data",
        root,
        "--out",
        tmp_path / "x",
        check=False,
    )
    assert wrong.returncode == 1 and "no captions for --tasks caption" in wrong.stderr


def test_question_prior_is_the_most_common_answer_per_type(synth):
    from changescope.models.baselines import QuestionPrior

    train = _records(synth, "train", "vqa")
    prior = QuestionPrior(train)
    for qtype in {r.qtype for r in train}:
        counts = Counter(r.answer for r in train if r.qtype == qtype)
        assert counts[prior.answer(qtype)] == max(counts.values())


def test_write_answer_with_a_hand_made_mask(tmp_path):
    from changescope.postprocess import boxes_from_mask
    from changescope.tasks.vqa import Answer, write_answer

    mask = np.zeros((40, 50), bool)
    mask[10:20, 5:15] = True
    mask[30:35, 40:50] = True
    after = np.full((40, 50, 3), 90, np.uint8)
    result = {"question": "q", "grounding": {"boxes": boxes_from_mask(mask)}}
    write_answer(Answer(mask, result, after), tmp_path)
    written = np.asarray(Image.open(tmp_path / "mask.png"))
    np.testing.assert_array_equal(written == 255, mask)
    assert result["grounding"]["boxes"] == [
        (5 / 50, 10 / 40, 15 / 50, 20 / 40),
        (40 / 50, 30 / 40, 1.0, 35 / 40),
    ]
    overlay = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"))
    assert (overlay[15, 10] != 90).any() and (overlay[25, 25] == 90).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answer.json", "mask.png", "overlay.png"]


# -- the shipped model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_pairs(tmp_path_factory):
    """SynthChange pairs at the shipped model's size from a seed it was not trained on."""
    from changescope.data.synth import generate

    root = tmp_path_factory.mktemp("fresh") / "s256"
    generate(root, pairs=24, size=256, seed=2026)
    return root


def test_shipped_model_answers_grounds_and_describes(fresh_pairs):
    from changescope.metrics.grounding import grounding_scores
    from changescope.tasks.inference import load
    from changescope.tasks.queries import read_target
    from changescope.tasks.vqa import ask_pair

    model, processor, _ = load("default", tta=1)  # answers and grounding read one view at any --tta
    assert {"caption", "mask", "vqa", "grounding"} <= set(model.tasks)
    records = [r for split in ("train", "val", "test") for r in _records(fresh_pairs, split, "vqa")]
    yes_no = [r for r in records if r.qtype == "change_or_not"][:20]
    right = sum(
        ask_pair(model, processor, r.images[0]["path"], r.images[1]["path"], r.question).result["answer"]
        == r.answer
        for r in yes_no
    )
    assert right >= 0.8 * len(yes_no)
    grounding = [r for split in ("train", "val", "test") for r in _records(fresh_pairs, split, "grounding")][
        :20
    ]
    preds, targets = [], []
    for r in grounding:
        answer = ask_pair(model, processor, r.images[0]["path"], r.images[1]["path"], r.question, min_area=0)
        preds.append(answer.mask)
        targets.append(read_target(r.mask))
    assert grounding_scores(preds, targets)["mIoU"] > 0.5
    count = next(r for r in records if r.qtype == "count")
    counted = ask_pair(model, processor, count.images[0]["path"], count.images[1]["path"], count.question)
    if not counted.result["free_form"]:
        assert counted.result["type"] == "count" and counted.result["number"] == int(counted.result["answer"])
    r = records[0]
    described = ask_pair(model, processor, r.images[0]["path"], r.images[1]["path"], "describe the changes.")
    assert described.result["free_form"] is True and described.result["type"] == "open"
    assert len(described.result["answer"].split()) >= 2
