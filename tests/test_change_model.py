"""The composed captioner, presets and save_pretrained / from_pretrained."""

import json
import math

import pytest
import torch

from changescope.data.text import Vocabulary
from changescope.errors import ChangescopeError, DataError
from changescope.models.change_model import ChangeModel
from changescope.models.config import ModelConfig
from changescope.models.hub import from_pretrained, save_pretrained
from changescope.models.presets import PRESETS, build_config
from changescope.models.processor import ChangeProcessor

TINY = {
    "backbone": "resnet18",
    "backbone_pretrained": False,
    "image_size": 64,
    "encoder_kwargs": {"d_model": 32, "num_layers": 1, "num_heads": 4},
    "decoder_kwargs": {"d_model": 32, "num_layers": 1, "num_heads": 4, "ffn_dim": 64, "max_len": 12},
}


def _tiny(encoder="chg2cap", classes=()):
    vocab = Vocabulary.build(["a new road is built", "two houses are built", "there is no difference"], 1)
    config = build_config("chg2cap", len(vocab), **{**TINY, "encoder": encoder, "classes": list(classes)})
    torch.manual_seed(0)
    return ChangeModel(config).eval(), ChangeProcessor(vocab, 64, 12)


@pytest.mark.parametrize("encoder", ["chg2cap", "rsiccformer", "bicross", "sen"])
def test_forward_and_generate_every_encoder(encoder):
    model, processor = _tiny(encoder)
    images = torch.rand(3, 2, 3, 64, 64)
    tokens = processor.encode_captions(["a new road is built", "two houses", "there is no difference"])
    assert model(images, tokens).caption_logits.shape == (*tokens.shape, model.config.vocab_size)
    out = model.generate(images, beam_size=2)
    assert len(out) == 3 and all(len(seq) <= 11 for seq in out)


@pytest.mark.parametrize("encoder", ["chg2cap", "rsiccformer", "bicross", "sen"])
def test_mask_head_with_every_encoder_gives_full_resolution_logits(encoder):
    model, _ = _tiny(encoder, classes=("background", "road", "building"))
    assert model.tasks == ("caption", "mask")
    out = model(torch.rand(2, 2, 3, 64, 64))
    assert out.mask_logits.shape == (2, 3, 64, 64)
    assert model.predict_masks(torch.rand(1, 2, 3, 64, 64)).shape == (1, 64, 64)
    # the mask head reads the change tokens: changing the encoder's output changes the mask
    assert model.mask_head.context is not None


def test_mask_only_model_has_no_decoder_and_says_so():
    config = build_config("chg2cap", 0, **{**TINY, "classes": ["background", "change"]})
    model = ChangeModel(config).eval()
    assert model.decoder is None and model.tasks == ("mask",)
    with pytest.raises(ChangescopeError, match="has no caption decoder"):
        model.generate(torch.rand(1, 2, 3, 64, 64))
    needs = "caption vocabulary, mask classes, answers, grounding, retrieval or a temporal head"
    with pytest.raises(ValueError, match=needs):
        ChangeModel(build_config("chg2cap", 0, **TINY))


def test_cached_features_give_the_same_outputs_as_images():
    model, _ = _tiny(classes=("background", "road", "building"))
    model.backbone.freeze()
    images = torch.rand(2, 2, 3, 64, 64)
    direct = model(images)
    cached = model(features=[f.half() for f in model.backbone_features(images)])
    torch.testing.assert_close(cached.memory, direct.memory, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(cached.mask_logits, direct.mask_logits, atol=5e-2, rtol=5e-2)


def test_mask_loss_ignores_unlabelled_pixels_and_handles_an_all_ignored_batch():
    from changescope.models.heads.mask_head import mask_loss

    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    ignored = target.clone()
    ignored[1] = 255
    # pixels of the ignored pair do not move the loss: equal to the loss of pair 0 alone
    torch.testing.assert_close(mask_loss(logits, ignored), mask_loss(logits[:1], target[:1]))
    empty = mask_loss(logits, torch.full_like(target, 255))
    assert empty.item() == 0.0
    empty.backward()


def test_presets_build_and_unknown_name_is_one_line():
    for name in PRESETS:
        config = build_config(name, 10, backbone_pretrained=False)
        assert config.preset == name and config.reference
    with pytest.raises(ChangescopeError, match="unknown preset 'nope'"):
        build_config("nope", 10)


def test_processor_resizes_any_size_and_encodes():
    _, processor = _tiny()
    assert processor.resize(torch.rand(2, 3, 50, 70)).shape == (2, 3, 64, 64)
    ids = processor.encode_captions(["a new road is built", "a"])
    assert ids.shape == (2, 7) and ids[1, 3:].eq(0).all()
    assert processor.decode(ids.tolist()) == ["a new road is built", "a"]


def test_save_load_round_trip_gives_identical_captions(tmp_path):
    model, processor = _tiny()
    images = torch.rand(4, 2, 3, 64, 64)
    before = model.generate(images, beam_size=3)
    save_pretrained(model, processor, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]
    loaded, loaded_proc = from_pretrained(tmp_path / "m")
    assert loaded.generate(images, beam_size=3) == before
    assert loaded_proc.vocab.itos == processor.vocab.itos
    # saving again replaces the directory whole; nothing else is left beside it
    save_pretrained(loaded, loaded_proc, tmp_path / "m", dtype=torch.float16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    half, _ = from_pretrained(tmp_path / "m")
    assert half.decoder.embed.weight.dtype == torch.float32


def test_bad_model_directories_are_one_line_errors(tmp_path):
    model, processor = _tiny()
    save_pretrained(model, processor, tmp_path / "m")
    with pytest.raises(DataError, match="model directory not found"):
        from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="config.json not found"):
        from_pretrained(tmp_path / "empty")
    Vocabulary.build(["just one other word"], 1).save(tmp_path / "m" / "vocab.json")
    with pytest.raises(DataError, match="wrong vocabulary"):
        from_pretrained(tmp_path / "m")
    processor.vocab.save(tmp_path / "m" / "vocab.json")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(DataError, match="model.safetensors"):
        from_pretrained(tmp_path / "m")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep")
    with pytest.raises(DataError, match="refusing to overwrite"):
        save_pretrained(model, processor, tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["format"] = "other"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="not a changescope model config"):
        from_pretrained(tmp_path / "m")
    config["format"], config["tta"] = "changescope-model/1", 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="config.json: tta must be 1, 2, 4 or 8 test-time views, got 3"):
        from_pretrained(tmp_path / "m")


def test_the_default_averages_four_views_unless_told():
    from changescope.tasks.inference import load

    assert load("default", "fp32")[0].tta == 4  # its config's tta
    assert load("default", "fp32", tta=1)[0].tta == 1


def test_views_invert_to_the_input_and_a_bad_count_is_refused():
    from changescope.models.views import VIEWS, apply_view, check_views, invert_view

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    seen = set()
    for k in range(len(VIEWS)):
        view = apply_view(x, k)
        assert torch.equal(invert_view(view, k), x)
        seen.add(tuple(view[0, 0].flatten().tolist()))
    assert len(seen) == 8  # eight different orientations
    with pytest.raises(ChangescopeError, match="--tta .* must be one of 1, 2, 4, 8, got 3"):
        check_views(3)
    with pytest.raises(ValueError, match="need it square"):
        apply_view(torch.rand(1, 4, 6), 5)


@pytest.mark.parametrize("views", [2, 4, 8])
def test_test_time_views_average_masks_and_keep_the_change_tokens(views):
    config = build_config(
        "chg2cap",
        0,
        **{**TINY, "classes": ["background", "road", "building"], "change_head_kwargs": {"channels": 16}},
    )
    config.change_threshold = 0.3
    torch.manual_seed(0)
    model = ChangeModel(config).eval()
    images = torch.rand(2, 2, 3, 64, 64)
    with torch.no_grad():
        plain = model(images)
        model.set_tta(views)
        out = model(images)
        # the views form a group: a mirrored pair gives the mirrored average, which one view does not
        mirrored = model(images.flip(-1))
        assert torch.allclose(mirrored.change_logit, out.change_logit.flip(-1), atol=1e-4)
        assert torch.allclose(mirrored.mask_logits, out.mask_logits.flip(-1), atol=1e-4)
        assert not torch.allclose(plain.change_logit, out.change_logit, atol=1e-3)
        # captions and answers read the pair as given: the change tokens are the first view's
        assert torch.allclose(out.memory, plain.memory, atol=1e-5)
        # and so does a ChangeLLM's last level, kept from the same passes: one backbone pass a view
        calls = []
        hook = model.backbone.register_forward_hook(lambda *args: calls.append(1))
        seen = model(images, last=True)
        hook.remove()
        assert len(calls) == views and torch.allclose(seen.last, model.levels(images)[-1], atol=1e-5)
        grounded = model(images, pixels=True)  # what grounding reads: the first view's map, averaged masks
        assert torch.allclose(grounded.pixels, model.set_tta(1)(images, pixels=True).pixels, atol=1e-5)
        assert torch.allclose(grounded.mask_logits, out.mask_logits, atol=1e-5)
        model.set_tta(views)
        if views == 8:  # and a quarter turn gives the turned average
            turned = model(images.transpose(-1, -2).flip(-1))
            assert torch.allclose(turned.change_logit, out.change_logit.transpose(-1, -2).flip(-1), atol=1e-4)
        if views <= 4:  # the mean of the change logits of each mirror, mapped back
            model.set_tta(1)
            flips = [(), (-1,), (-2,), (-2, -1)][:views]
            by_hand = [model(images.flip(d)).change_logit.flip(d) for d in flips]
            assert torch.allclose(out.change_logit, torch.stack(by_hand).mean(0), atol=1e-4)


def _two_heads(seed_fine=0, seed_coarse=1):
    config = build_config(
        "chg2cap", 0, **{**TINY, "classes": ["background", "change"], "change_head_kwargs": {"channels": 16}}
    )
    torch.manual_seed(0)
    fine = ChangeModel(config).eval()
    coarse = ChangeModel(ModelConfig.from_dict(config.to_dict())).eval()
    coarse.load_state_dict(fine.state_dict())
    torch.manual_seed(seed_coarse)  # the coarse model's change head trained apart
    for p in coarse.change_head.parameters():
        p.data.normal_(0, 0.2)
    coarse.config.change_threshold = 0.3
    return fine, coarse


def test_a_coarse_change_head_decides_change_on_coarse_inputs_only(tmp_path):
    from changescope.models.change_bands import with_coarse_head

    fine, coarse = _two_heads()
    model = with_coarse_head(fine, coarse, coarse_gsd=5.0)
    assert model.config.coarse_gsd == 5.0 and model.config.coarse_change_threshold == 0.3
    names = [model.change_head_name(g) for g in (None, 0.5, 5.0)]
    assert names == ["change_head", "change_head", "coarse_change_head"]
    assert fine.change_head_name(10.0) == "change_head" and _tiny()[0].change_head_name(None) is None
    images = torch.rand(2, 2, 3, 64, 64)
    with torch.no_grad():
        for gsd, like in ((None, fine), (0.5, fine), (4.9, fine), (5.0, coarse), (10.0, coarse)):
            out, expected = model(images, gsd=gsd), like(images)
            assert torch.allclose(out.change_logit, expected.change_logit, atol=1e-5), gsd
            assert torch.allclose(out.mask_logits, expected.mask_logits, atol=1e-5), gsd  # its threshold
            assert torch.allclose(out.memory, fine(images).memory)
        # the GSD reaches the model from the tasks that know it (detect --gsd, scene, evaluate)
        from changescope.tasks.detection import mask_probabilities

        processor, pair = ChangeProcessor(None, 64, 12), torch.rand(2, 3, 80, 96)  # tiled: larger than 64
        for gsd, like in ((None, fine), (10.0, coarse)):
            got = mask_probabilities(model, processor, pair, gsd)
            assert torch.allclose(got, mask_probabilities(like, processor, pair), atol=1e-5), gsd
        # saved and rebuilt without the code that made it; views average the chosen head
        save_pretrained(model, ChangeProcessor(None, 64, 12), tmp_path / "m")
        loaded, _ = from_pretrained(tmp_path / "m")
        assert torch.allclose(loaded(images, gsd=10.0).change_logit, coarse(images).change_logit, atol=1e-5)
        coarse.set_tta(2)
        assert torch.allclose(loaded.set_tta(2)(images, gsd=10.0).change_logit, coarse(images).change_logit)
    other = _two_heads()[0]
    torch.nn.init.zeros_(next(other.encoder.parameters()))
    with pytest.raises(ValueError, match="differs between the models: only the change heads may differ"):
        with_coarse_head(fine, other, 5.0)
    with pytest.raises(ValueError, match="exactly one change head"):
        with_coarse_head(model, coarse, 5.0)
    bad = model.config.to_dict() | {"coarse_gsd": -1}
    with pytest.raises(DataError, match="coarse_gsd must be a positive number of metres"):
        ModelConfig.from_dict(bad)


def test_describe_and_detect_hand_the_inputs_gsd_to_the_model(monkeypatch):
    """The GSD a user gives reaches the forward pass (where it picks the change head); a spy on forward
    records it, the model still runs for real."""
    import numpy as np

    from changescope.tasks.describe import describe_files
    from changescope.tasks.detection import iter_detections
    from changescope.tasks.inference import Decoding

    model, processor = _tiny(classes=["background", "road", "building"])
    seen, forward = [], model.forward

    def spy(*args, **kwargs):
        if kwargs.get("masks", True):  # captions alone (masks=False) read no change head
            seen.append(kwargs.get("gsd"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    rows = describe_files(model, processor, [("p", a, b)], Decoding(), gsd=10.0)
    assert rows[0]["caption_source"] in ("model", "mask") and seen == [10.0]
    large = rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)  # tiled: larger than the model's 64 px
    list(iter_detections(model, processor, [("p", a, b), ("q", large, large)], 10, Decoding(), 0.5))
    assert len(seen) > 2 and set(seen[1:]) == {0.5}


def _probed(bias: float):
    """The two-head model with a GSD probe that says coarse (bias > 0) or fine (< 0) for everything."""
    from changescope.models.change_bands import with_coarse_head, with_gsd_probe

    fine, coarse = _two_heads()
    model = with_coarse_head(fine, coarse, coarse_gsd=5.0)
    features = 2 * sum(model.backbone.channels[-2:])
    return with_gsd_probe(model, torch.zeros(features), torch.tensor(bias)), fine, coarse


def test_a_gsd_probe_sends_inputs_of_unknown_gsd_that_look_coarse_to_the_coarse_head(tmp_path, monkeypatch):
    from changescope.models.change_bands import with_gsd_probe
    from changescope.models.heads.gsd_probe import fit_probe
    from changescope.tasks.detection import head_for_pair, iter_detections, mask_probabilities

    images = torch.rand(3, 2, 3, 64, 64)
    shift = math.log(0.5 / 0.5) - math.log(0.3 / 0.7)  # into the fine threshold's frame (0.5 vs 0.3)
    with torch.no_grad():
        model, fine, coarse = _probed(10.0)
        out = model(images)
        assert out.coarse.tolist() == [True] * 3
        assert torch.allclose(out.change_logit, coarse(images).change_logit + shift, atol=1e-4)
        assert torch.allclose(out.mask_logits.argmax(1), coarse(images).mask_logits.argmax(1))
        # a known GSD decides as before, without the probe
        assert model(images, gsd=0.5).coarse is None
        assert torch.allclose(model(images, gsd=0.5).change_logit, fine(images).change_logit, atol=1e-5)
        # per pair: a probe that calls the middle pair fine (its decision replaced, a test double: the
        # routing is what is tested here, the probe's own weights below)
        calls = []

        def decide(levels):
            calls.append(1)
            return torch.tensor([1.0, -1.0, 1.0])

        monkeypatch.setattr(model.gsd_probe, "forward", decide)
        out = model(images)
        assert out.coarse.tolist() == [True, False, True]
        assert torch.allclose(out.change_logit[1], fine(images).change_logit[1], atol=1e-5)
        assert torch.allclose(out.change_logit[2], coarse(images).change_logit[2] + shift, atol=1e-4)
        # test-time views keep the first view's choice: one decision, each pair's head in every view
        coarse.set_tta(2)
        out = model.set_tta(2)(images)
        assert len(calls) == 2 and out.coarse.tolist() == [True, False, True]
        assert torch.allclose(out.change_logit[2], coarse(images).change_logit[2] + shift, atol=1e-4)
        model.set_tta(1), coarse.set_tta(1)
        monkeypatch.undo()
        # a large pair reads one head for all its tiles, and detect names it
        processor, pair = ChangeProcessor(None, 64, 12), torch.rand(2, 3, 80, 96)
        assert (
            head_for_pair(model, processor, pair) is True
            and head_for_pair(model, processor, pair, 1.0) is None
        )
        got = mask_probabilities(model, processor, pair)
        assert torch.allclose(got, mask_probabilities(coarse, processor, pair), atol=1e-5)

        def rgb(image):  # [3, H, W] in [0, 1] -> the uint8 array a user would pass
            return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()

        rows = [("big", rgb(pair[0]), rgb(pair[1])), ("small", rgb(images[0, 0]), rgb(images[0, 1]))]
        heads = [d.result["change_head"] for d in iter_detections(model, processor, rows, captions=False)]
        assert heads == ["coarse_change_head", "coarse_change_head"]
        fine_model = _probed(-10.0)[0]
        heads = [
            d.result["change_head"] for d in iter_detections(fine_model, processor, rows, captions=False)
        ]
        assert heads == ["change_head", "change_head"]
    # saved and rebuilt with its probe
    save_pretrained(model, ChangeProcessor(None, 64, 12), tmp_path / "m")
    loaded, _ = from_pretrained(tmp_path / "m")
    assert loaded.config.gsd_probe and torch.equal(loaded.gsd_probe.linear.bias, model.gsd_probe.linear.bias)
    with pytest.raises(ValueError, match="this model has one"):
        with_gsd_probe(fine, torch.zeros(4), torch.tensor(0.0))
    # the fit: two clouds of features, told apart
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 6, generator=generator), torch.randn(10, 6, generator=generator) + 3])
    y = torch.arange(50) >= 40
    weight, bias = fit_probe(x * 5 + 7, y)  # raw features: the standardisation is folded in
    assert ((x * 5 + 7) @ weight + bias > 0).eq(y).float().mean() > 0.95
    with pytest.raises(ValueError, match="both coarse and fine"):
        fit_probe(x, torch.zeros(50, dtype=torch.bool))
