import random
import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from changescope.errors import ChangescopeError
from changescope.metrics import captions
from changescope.metrics.captions import caption_scores, evaluate_captions

WORDS = (
    "a an the road roads building buildings house houses tree trees new old is are has have been built "
    "removed appears appear there top bottom left right corner center of in at near some many two three "
    "large small along side scene area field green bare land parking lot river bridge"
).split()
NO_CHANGE = ("there is no difference", "the scene is the same as before", "no change has occurred")


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))


def _random_set(n: int, seed: int = 0):
    """Already-normalised captions, so pycocoevalcap called directly sees the same strings."""
    rng = random.Random(seed)
    refs, preds, changed = {}, {}, {}
    for i in range(n):
        key = f"test_{i:06d}"
        changed[key] = rng.random() < 0.5
        if changed[key]:
            refs[key] = [_sentence(rng) for _ in range(5)]
            preds[key] = rng.choice([_sentence(rng), rng.choice(refs[key]), rng.choice(NO_CHANGE)])
        else:
            refs[key] = list(NO_CHANGE)
            preds[key] = rng.choice([*NO_CHANGE, _sentence(rng)])
    return preds, refs, changed


def _direct(refs, preds, ids=None):
    ids = list(refs) if ids is None else ids
    gts = {k: list(refs[k]) for k in ids}
    res = {k: [preds[k]] for k in ids}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return gts, res, bleu, rouge, cider


def test_parity_with_pycocoevalcap_scorers():
    preds, refs, _ = _random_set(400)
    _, _, bleu, rouge, cider = _direct(refs, preds)
    scores = caption_scores(preds, refs, meteor=False)
    for n in range(4):
        assert scores[f"BLEU-{n + 1}"] == pytest.approx(bleu[n], abs=1e-9)
    assert scores["ROUGE-L"] == pytest.approx(rouge, abs=1e-9)
    assert scores["CIDEr-D"] == pytest.approx(cider, abs=1e-9)
    assert scores["METEOR"] is None and scores["S*m"] is None and scores["SPICE"] is None
    assert "disabled" in scores["unavailable"]["METEOR"] and scores["unavailable"]["SPICE"]
    assert 0 < scores["BLEU-4"] < 1 and scores["CIDEr-D"] > 0


def test_text_is_normalised_before_scoring():
    refs = {"a": ["A new road is built.", "Some trees are removed!"], "b": ["There is no difference."]}
    plain = {"a": ["a new road is built", "some trees are removed"], "b": ["there is no difference"]}
    preds = {"a": "A NEW road, is built", "b": "there is no difference ."}
    assert caption_scores(preds, refs, meteor=False) == caption_scores(
        {"a": "a new road is built", "b": "there is no difference"}, plain, meteor=False
    )


def test_empty_prediction_and_empty_reference():
    refs = {"a": ["a new road is built", "..."], "b": ["there is no difference"]}
    preds = {"a": "!!", "b": "there is no difference"}
    scores = caption_scores(preds, refs, meteor=False)
    # the empty caption is scored as "" against the references that have words
    _, _, bleu, rouge, cider = _direct(
        {"a": ["a new road is built"], "b": ["there is no difference"]},
        {"a": "", "b": "there is no difference"},
    )
    assert scores["BLEU-1"] == pytest.approx(bleu[0], abs=1e-12)
    assert scores["ROUGE-L"] == pytest.approx(rouge) == 0.5
    assert scores["CIDEr-D"] == pytest.approx(cider)
    everything_empty = caption_scores({"a": "", "b": ""}, refs, meteor=False)
    assert everything_empty["BLEU-1"] == everything_empty["ROUGE-L"] == everything_empty["CIDEr-D"] == 0
    with pytest.raises(ValueError, match="'b' has no reference caption with any words"):
        caption_scores(preds, {"a": refs["a"], "b": ["?"]}, meteor=False)


def test_mismatched_ids_raise():
    refs = {"a": ["x y"], "b": ["y z"], "c": ["z w"]}
    with pytest.raises(ValueError, match=r"no prediction for 2 reference id\(s\): 'b', 'c'"):
        caption_scores({"a": "x"}, refs, meteor=False)
    with pytest.raises(ValueError, match=r"have no references: 'd'"):
        caption_scores({"a": "x", "b": "y", "c": "z", "d": "w"}, refs, meteor=False)
    with pytest.raises(ValueError, match="list of strings"):
        caption_scores({"a": "x"}, {"a": "x y"}, meteor=False)


def test_evaluate_captions_subsets_and_accuracies():
    refs = {
        "c1": ["a new road is built", "a road appears in the center"],
        "c2": ["two houses are built", "some houses appear at the top"],
        "n1": list(NO_CHANGE),
        "n2": list(NO_CHANGE),
        "n3": list(NO_CHANGE),
    }
    changed = {"c1": True, "c2": True, "n1": False, "n2": False, "n3": False}
    preds = {
        "c1": "A road is built.",
        "c2": "There is no difference.",  # a changed pair described as unchanged
        "n1": "The scene is the same as before!",
        "n2": "no change has occurred",
        "n3": "a house appears",  # an unchanged pair described as changed
    }
    result = evaluate_captions(preds, refs, changed, NO_CHANGE, meteor=False)
    assert result["counts"] == {"change": 2, "no_change": 3}
    assert result["change_accuracy"] == pytest.approx(1 / 2)
    assert result["no_change_accuracy"] == pytest.approx(2 / 3)
    assert result["all"] == caption_scores(preds, refs, meteor=False)
    for name, ids in (("change", ["c1", "c2"]), ("no_change", ["n1", "n2", "n3"])):
        subset = result[name]
        assert "CIDEr-D" not in subset and "S*m" not in subset and "CIDEr-D" in subset["unavailable"]
        alone = caption_scores({k: preds[k] for k in ids}, {k: refs[k] for k in ids}, meteor=False)
        for key in ("BLEU-1", "BLEU-4", "ROUGE-L"):
            assert subset[key] == alone[key]
    # an all-changed set has no no-change subset and no no-change accuracy
    only_change = evaluate_captions(
        {k: preds[k] for k in ("c1", "c2")},
        {k: refs[k] for k in ("c1", "c2")},
        changed,
        NO_CHANGE,
        meteor=False,
    )
    assert only_change["no_change"] is None and only_change["no_change_accuracy"] is None
    with pytest.raises(ValueError, match="no change flag"):
        evaluate_captions(preds, refs, {"c1": True}, NO_CHANGE, meteor=False)


def test_missing_java_reports_meteor_unavailable(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    preds, refs, _ = _random_set(20)
    scores = caption_scores(preds, refs)
    assert scores["METEOR"] is None and scores["S*m"] is None
    assert "Java" in scores["unavailable"]["METEOR"]
    assert scores["BLEU-4"] is not None and scores["CIDEr-D"] is not None
    with pytest.raises(ChangescopeError, match="METEOR needs Java"):
        caption_scores(preds, refs, meteor=True)


def test_meteor_process_closed_when_scoring_fails(monkeypatch):
    closed = []

    class BrokenMeteor:
        def compute_score(self, gts, res):
            raise BrokenPipeError("pipe closed")

        def failure(self):
            return "java.lang.OutOfMemoryError"

        def close(self):
            closed.append(True)

    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: "/usr/bin/java")
    monkeypatch.setattr(captions, "_Meteor", BrokenMeteor)
    with pytest.raises(ChangescopeError, match="OutOfMemoryError"):
        evaluate_captions({"a": "x y"}, {"a": ["x y"]}, {"a": True}, NO_CHANGE)
    assert closed == [True]


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_dead_jvm_is_a_clear_error_not_a_hang():
    scorer = captions._Meteor()
    scorer.meteor_p.kill()  # killed before it loads anything: costs no JVM start-up time
    scorer.meteor_p.wait()
    with pytest.raises(ChangescopeError, match="METEOR .* failed: the JVM exited"):
        captions.group_scores({"a": ["x y"]}, {"a": ["x"]}, scorer, None)
    # pycocoevalcap's compute_score left its lock held; closing (and garbage collection) must not wait on it
    assert scorer.lock.locked()
    scorer.close()
    del scorer


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_parity_one_jvm_per_call(monkeypatch):
    preds, refs, changed = _random_set(300, seed=1)
    groups = {
        "all": list(refs),
        "change": [k for k in refs if changed[k]],
        "no_change": [k for k in refs if not changed[k]],
    }
    started, expected = [], {}

    class CountingMeteor(captions._Meteor):
        """Counts JVM starts; before the JVM closes, scores the test's own texts through pycocoevalcap's
        ``Meteor.compute_score`` on it, so the reference values cost no second JVM start (~15 s)."""

        def __init__(self):
            super().__init__()
            started.append(self)

        def close(self):
            if self.meteor_p.poll() is None and not expected:
                for name, ids in groups.items():
                    gts, res, *_ = _direct(refs, preds, ids)
                    expected[name], _ = Meteor.compute_score(self, gts, res)
            super().close()

    monkeypatch.setattr(captions, "_Meteor", CountingMeteor)
    result = evaluate_captions(preds, refs, changed, NO_CHANGE, meteor=True)
    assert len(started) == 1 and started[0].meteor_p.poll() is not None  # one JVM, closed on return
    for name in groups:
        assert result[name]["METEOR"] == pytest.approx(expected[name], abs=1e-6), name
    scores = result["all"]
    expected_sm = (scores["BLEU-4"] + scores["METEOR"] + scores["ROUGE-L"] + scores["CIDEr-D"]) / 4
    assert scores["S*m"] == pytest.approx(expected_sm, abs=1e-12)
    assert 0 < scores["METEOR"] < 1 and "METEOR" not in scores["unavailable"]
