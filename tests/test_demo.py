"""`make demo` runs `changescope.demo.run`: the shipped model on SynthChange pairs it never saw."""

import pytest

from changescope.demo import run
from changescope.tasks.inference import DEFAULT_MODEL


def test_demo_writes_report_with_every_caption(tmp_path):
    result = run(tmp_path / "demo", pairs=6, seed=11)
    assert result["check_ok"]
    html = (tmp_path / "demo" / "report.html").read_text()
    assert html.count("class='pair'") == 6
    assert "SynthChange only" in html
    assert result["scores"]["n"] == 6 and result["scores"]["BLEU-4"] is not None
    if result["detection"] is not None:  # the shipped multitask model: masks and counts in the report
        assert html.count("alt='predicted change'") == 6 and "class='counts'" in html
        assert result["detection"]["mIoU_no_bg"] is not None
    if "vqa" in result:  # a model that answers: questions asked on each pair and scored
        assert "Q: " in html and "(true: " in html
        assert result["vqa"]["n"] > 0 and 0 <= result["vqa"]["OA"] <= 1


def test_shipped_model_loads_without_training_code_and_fits_the_size_budget():
    from changescope.models.hub import from_pretrained

    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip("no shipped model in this checkout")
    # six heads in fp16 (the temporal head reads stacks); the frozen MiniLM question encoder (90 MB)
    # comes from its package, not this file
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.iterdir())
    assert size <= 30 * 2**20
    from safetensors import safe_open

    with safe_open(str(DEFAULT_MODEL / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if k.startswith("question_encoder")]
    model, processor = from_pretrained(DEFAULT_MODEL)
    assert model.config.preset == "lite" and len(processor.vocab) == model.config.vocab_size
    assert model.tasks == ("caption", "mask", "vqa", "grounding", "retrieval", "sequence")
    assert model.config.classes == ["background", "road", "building", "tree", "water"]
