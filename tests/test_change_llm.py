"""The change LLM (issue 16): change tokens into a causal LM, instruction data, LoRA training, merged export.

Built for real with the packaged SmolLM2 tokenizer and a tiny random Llama (``llm-tiny``: the 135 M
SmolLM2 would take minutes per step here); the training test runs `changescope train --preset llm-tiny`
end to end and loads the export without the training code.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from changescope.cli import main
from changescope.data.instructions import area_answer, grid_answer, read_instructions, write_instructions
from changescope.errors import ChangescopeError

pytest.importorskip("peft", reason="the llm extra (peft) is not installed")


@pytest.fixture(scope="module")
def tiny():
    from changescope.models.llm_hub import build_change_llm

    torch.manual_seed(0)
    return build_change_llm("llm-tiny")


TURNS = [
    {"from": "human", "value": "<image>\nWhat changed?"},
    {"from": "gpt", "value": "a new road is built"},
    {"from": "human", "value": "How many buildings were built?"},
    {"from": "gpt", "value": "2"},
]


def test_the_loss_is_on_the_assistant_turns_only(tiny):
    _, processor = tiny
    item = processor.encode(TURNS)
    tokenizer = processor.tokenizer
    learned = [t for t, label in zip(item["input_ids"], item["labels"], strict=True) if label != -100]
    assert tokenizer.decode(learned) == "a new road is built<|im_end|>2<|im_end|>"
    before = tokenizer.decode(item["input_ids"][: item["image_at"]])
    assert before.endswith("<|im_start|>user\n") and processor.system_prompt in before
    prompt = processor.prompt(TURNS[:3])
    assert tokenizer.decode(prompt["input_ids"]).endswith("<|im_start|>assistant\n")
    assert set(prompt["labels"]) == {-100}
    for bad, match in (
        (TURNS[1:], "turns alternate"),
        ([{"from": "human", "value": "What changed?"}, TURNS[1]], "must hold <image> once"),
        ([TURNS[0], {"from": "gpt", "value": "<image> a road"}], "must hold <image> once"),
        (TURNS[:3], "ends on a human turn"),
    ):
        with pytest.raises(ChangescopeError, match=match):
            processor.encode(bad)


def test_batched_left_padded_prompts_and_a_merged_round_trip(tiny, tmp_path, synth):
    from changescope.models.llm_hub import load_change_llm, save_change_llm
    from changescope.tasks.detection import iter_detections
    from changescope.tasks.llm_inference import look, reply

    model, processor = tiny
    with torch.no_grad():  # LoRA's B starts at zero: move it, so that merging has something to merge
        for name, param in model.lm.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    a, b = synth / "images/test/A", synth / "images/test/B"
    names = sorted(p.name for p in a.iterdir())[:3]
    pairs = [(a / n, b / n) for n in names]
    items = [{**processor.encode(TURNS), "images": processor.read_pair(*p)} for p in pairs]
    batch = processor.collate(items)
    model.eval()
    with torch.no_grad():
        loss, logits, targets = model(batch)
    assert logits.shape[:2] == targets.shape and (targets != -100).sum() == 3 * 8  # 8 learned tokens a row
    save_change_llm(model, processor, tmp_path / "llm")
    names = sorted(p.name for p in (tmp_path / "llm").iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer", "vision"]
    loaded, loaded_processor = load_change_llm(tmp_path / "llm")
    assert not any("lora" in k for k in loaded.state_dict())  # merged: a plain LM
    with torch.no_grad():
        again, _, _ = loaded(batch)
    assert torch.allclose(loss, again, atol=1e-4), (loss, again)
    said = reply(loaded, loaded_processor, pairs, ["What changed?"] * 3, batch_size=3, max_new_tokens=4)
    assert len(said) == 3 and all(isinstance(s, str) for s in said)
    # one vision pass per pair (look) gives the LM the tokens it would compute itself and detect's mask
    sights = look(loaded, loaded_processor, pairs)
    images = torch.stack([loaded_processor.read_pair(*p) for p in pairs])
    with torch.no_grad():
        memory, last = loaded.vision_features(images)
    assert torch.allclose(torch.cat([s.features[0] for s in sights]), memory, atol=1e-5)
    assert torch.allclose(torch.cat([s.features[1] for s in sights]), last, atol=1e-5)
    seen = [s.features for s in sights]
    again = reply(loaded, loaded_processor, pairs, ["What changed?"] * 3, max_new_tokens=4, features=seen)
    assert again == said
    rows = [(str(i), *p) for i, p in enumerate(pairs)]
    detected = iter_detections(loaded.vision, loaded_processor.image_processor, rows)
    captionless = {"caption", "caption_source", "model_caption"}
    for sight, detection in zip(sights, detected, strict=True):
        assert sight.summary["model_caption"] is None  # the classic decoder did not run
        assert {k: v for k, v in sight.summary.items() if k not in captionless} == {
            k: v for k, v in detection.result.items() if k not in captionless
        }


def test_instructions_are_read_off_the_labels(synth, tmp_path):
    from changescope.data.readers import open_dataset

    mask = np.zeros((90, 90), bool)
    mask[:10, :10] = True  # top left
    mask[40:50, 40:50] = True  # center
    assert grid_answer(mask) == "top left and center"
    assert grid_answer(np.zeros((9, 9), bool)) == "nowhere"
    assert area_answer(mask) == "about 2 % of the image" and area_answer(mask[:1, :1] & False) == "none of it"
    counts = write_instructions(synth, tmp_path / "instr", ("train", "val"), seed=1)
    assert counts["train"] > 0 and counts["val"] > 0
    rows = read_instructions(tmp_path / "instr" / "val.jsonl")
    dataset = open_dataset(tmp_path / "instr", "val")  # the changescope-instructions reader
    assert len(dataset) == len(rows) and dataset.format == "changescope-instructions"
    labels = open_dataset(synth, "val")
    flags = {e.id: e.flag for e in labels.entries}
    for row in rows:
        assert len(row["kinds"]) == len(row["conversations"]) // 2
        if row["kinds"][0] == "changed":
            assert row["conversations"][1]["value"] == ("yes" if flags[row["id"]] else "no")
    assert write_instructions(synth, tmp_path / "again", ("val",), seed=1) == {"val": counts["val"]}
    assert (tmp_path / "again" / "val.jsonl").read_text() == (tmp_path / "instr" / "val.jsonl").read_text()


def test_train_llm_tiny_end_to_end_and_answer(synth, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = ["train", "--preset", "llm-tiny", "--data", str(synth), "--out", str(run), "--epochs", "1"]
    # --freeze backbone: a copy of the change encoder trains too (the vision model itself stays as it was)
    assert main([*argv, "--batch-size", "4", "--limit-pairs", "8", "--freeze", "backbone"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == str(run / "model") and 0 <= summary["val/token_accuracy"] <= 1
    assert (run / "instructions" / "train.jsonl").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trained = checkpoint["state_dict"]
    assert all("lora_" in k or k.startswith(("model.projector.", "model.encoder.")) for k in trained)
    from changescope.models.llm_hub import load_change_llm
    from changescope.tasks.inference import load

    loaded, _ = load_change_llm(run / "model")
    shipped, _, _ = load("default", "fp32", fold=False)  # the weights as saved
    assert loaded.config.tune_encoder and loaded.encoder is not None
    tuned = dict(loaded.encoder.state_dict())
    for name, weight in loaded.vision.encoder.state_dict().items():  # the vision model is the shipped one
        assert torch.equal(weight, shipped.encoder.state_dict()[name].to(weight.dtype)), name
    assert any(not torch.equal(tuned[n], w.float()) for n, w in shipped.encoder.state_dict().items())
    # as serve loads it: beside the process's shared vision model, whose batch norms are folded
    served, _ = load_change_llm(run / "model", vision=load(run / "model" / "vision", "fp32")[:2])
    assert served.vision.folded and served.encoder.state_dict().keys() == tuned.keys()
    assert all(torch.equal(served.encoder.state_dict()[n], w) for n, w in tuned.items())
    a = synth / "images/test/A"
    first = sorted(a.iterdir())[0]
    pair = [str(first), str(synth / "images/test/B" / first.name)]
    assert main(["ask", str(run), *pair, "How many buildings were built?", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["source"] == "change-llm" and isinstance(answer["answer"], str)
    assert answer["cited"].startswith(answer["answer"]) and "citation" in answer
    # the classic models' tables from free-text replies: captions, OA / AA, numbers against the mask
    assert main(["evaluate", str(run), "--data", str(synth), "--limit", "2", "--json", "--no-meteor"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["n"] == 2 and scores["limit"] == 2 and "CIDEr-D" in scores
    assert 0 <= scores["vqa"]["OA"] <= 1 and scores["vqa"]["n"] > 0 and "count" in scores["vqa"]["per_type"]
    assert scores["citations"]["n"] >= scores["vqa"]["counts"]["change_or_not"]  # each has a citation
    monkeypatch.setattr(sys, "stdin", io.StringIO("what changed?\nhow many buildings?\n\n"))
    assert main(["chat", *pair, "--model", str(run)]) == 0
    assert capsys.readouterr().out.count("llm> ") == 2  # two messages, two replies, then the empty line
    # the export loads without the training code: no peft, no Lightning imported
    code = (
        "import sys; from changescope.models.llm_hub import load_change_llm; "
        f"load_change_llm({str(run / 'model')!r}); "
        "print(sorted(m for m in ('peft', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_any_local_causal_lm_folder_or_gguf_is_an_lm_source(tiny, tmp_path):
    """`--llm` takes a Hugging Face model folder (Qwen2.5, LLaMA, ... weights a user has) or a .gguf file;
    a name that is neither is refused before anything loads: nothing is downloaded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from changescope.errors import DataError
    from changescope.models.llm_hub import check_lm_source, load_lm

    model, processor = tiny
    folder = tmp_path / "my-lm"
    base = LlamaForCausalLM(LlamaConfig(**model.config.lm_config))  # a plain LM, as a user's would be
    base.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    lm, tokenizer = load_lm(str(folder))
    assert type(lm).__name__ == "LlamaForCausalLM" and len(tokenizer) == len(processor.tokenizer)
    assert lm.config.hidden_size == base.config.hidden_size
    assert torch.equal(lm.lm_head.weight, base.lm_head.weight)
    for name in ("Qwen/Qwen2.5-0.5B-Instruct", str(tmp_path / "missing.gguf")):
        with pytest.raises(DataError, match="never downloaded"):
            check_lm_source(name)
