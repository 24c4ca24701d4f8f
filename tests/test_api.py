"""The Python API (``changescope.load``): the CLI's results from paths, PIL images and arrays, batched."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import changescope
from changescope.errors import ChangescopeError, DataError


@pytest.fixture(scope="module")
def pipe():
    # one test-time view (the default's own is 4): the tests below count backbone passes of one view
    return changescope.load("default", precision="fp32", tta=1)


@pytest.fixture(scope="module")
def pair(synth):
    folder = synth / "images" / "test"
    a = sorted((folder / "A").iterdir())[0]
    return a, folder / "B" / a.name


def test_import_changescope_is_light():
    code = "import sys, changescope; print('torch' in sys.modules, changescope.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"


def test_paths_pil_and_arrays_give_the_same_results(pipe, pair):
    a, b = pair
    caption = pipe.describe(a, b)
    assert isinstance(caption, str) and caption
    pil_a, arr_b = Image.open(a), np.asarray(Image.open(b).convert("RGB"))
    assert pipe.describe(pil_a, arr_b) == caption
    assert pipe.describe(np.asarray(pil_a.convert("RGB")) / 255.0, arr_b) == caption  # float in [0, 1]
    assert pipe.describe([a, pil_a], [b, arr_b], batch_size=1) == [caption, caption]
    found, again = pipe.detect(a, b), pipe.detect(pil_a, arr_b)
    np.testing.assert_array_equal(found.mask, again.mask)
    assert found.result["before"] == str(a) and again.result["before"] == "<PngImageFile 64x64>"
    assert found.result["caption"] == caption
    answer = pipe.ask(a, b, "is there any change?")
    assert answer.result["answer"] in ("yes", "no")


def test_bad_inputs_are_one_line_errors(pipe, pair):
    a, b = pair
    with pytest.raises(DataError, match=r"after: 1-band image \(shape \(64, 64\)\)"):
        pipe.describe(a, np.zeros((64, 64), np.uint8))
    with pytest.raises(DataError, match="values in \\[0, 1\\]"):
        pipe.describe(a, np.full((64, 64, 3), 2.0))
    with pytest.raises(DataError, match="got list"):
        pipe.detect(a, [[1, 2, 3]])
    with pytest.raises(DataError, match="1-band"):
        pipe.describe(a, Image.new("L", (64, 64)))
    with pytest.raises(ChangescopeError, match="2 before images but 1 after"):
        pipe.describe([a, a], [b])
    with pytest.raises(DataError, match="image is 32x32 but"):
        pipe.describe(a, np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ChangescopeError, match="--precision must be one of"):
        changescope.load("default", precision="fp8")


def test_the_default_precision_is_bf16_where_the_cpu_computes_it():
    from changescope.tasks.inference import default_precision

    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert changescope.load("default").precision == default_precision() == ("bf16" if native else "fp32")
    assert default_precision("meta") == "fp32"


def test_bf16_matches_fp32_on_the_change_map(pipe, synth):
    """bf16 autocast (this CPU's AMX units) gives the same masks but for a few pixels per pair."""
    fast = changescope.load("default", precision="bf16", tta=1)
    assert fast.precision == "bf16" and pipe.precision == "fp32"
    folder = synth / "images" / "test"
    agree = []
    # 3 pairs, one describe: bf16 is emulated (slow) on CPUs without AMX / AVX-512 BF16 units
    pairs = [(a, folder / "B" / a.name) for a in sorted((folder / "A").iterdir())[:3]]
    for a, b in pairs:
        found = fast.detect(a, b)
        agree.append((pipe.detect(a, b).mask == found.mask).mean())
        assert isinstance(found.result["caption"], str)
    assert min(agree) > 0.98, agree
    assert isinstance(fast.describe(*pairs[0]), str)


def test_detect_runs_the_backbone_once_and_matches_mask_then_caption(pipe, pair):
    from changescope.postprocess import remove_small_objects
    from changescope.tasks.detection import predict_mask
    from changescope.tasks.inference import Decoding, caption_pairs

    calls = []
    hook = pipe.model.backbone.body.register_forward_hook(lambda *_: calls.append(1))
    try:
        found = pipe.detect(*pair)
    finally:
        hook.remove()
    assert len(calls) == 1  # before and after go through the backbone as one batch
    tensors = pipe.processor.read_pair(*pair)
    with torch.inference_mode():
        mask = remove_small_objects(predict_mask(pipe.model, pipe.processor, tensors), 10)
        caption = caption_pairs(pipe.model, pipe.processor, tensors[None], Decoding())[0]
    np.testing.assert_array_equal(found.mask, mask)
    assert found.result["model_caption"] == caption


def test_test_time_views_average_the_mask_one_view_at_a_time(pipe, pair):
    views = changescope.load("default", precision="fp32")  # the default's own 4 views
    assert views.tta == 4 and pipe.tta == 1 and "tta=4" in repr(views)
    batches = []
    hook = views.model.backbone.body.register_forward_hook(lambda _m, args, _o: batches.append(len(args[0])))
    try:
        found = views.detect(*pair)
    finally:
        hook.remove()
    assert batches == [2] * 4  # before and after, once per view
    plain = pipe.detect(*pair)
    assert found.result["model_caption"] == plain.result["model_caption"]  # captions read the pair as given
    assert found.mask.shape == plain.mask.shape and 0.9 < (found.mask == plain.mask).mean() < 1
