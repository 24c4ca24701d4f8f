"""Temporal questions answered from interval masks: with the true masks, SynthChange's own answers."""

import numpy as np

from changescope.data.synth.classes import CHANGE_MASK_CLASS, MASK_CLASSES
from changescope.data.synth.sequence import render_sequence
from changescope.metrics.temporal import first_change_map
from changescope.postprocess import summarize_mask
from changescope.tasks.sequence import SequenceChange
from changescope.tasks.temporal_qa import answer_temporal, asked_class, interval_phrase


def truth_change(seq) -> SequenceChange:
    results = [
        {"interval": i, **summarize_mask(mask, list(MASK_CLASSES))}
        for i, mask in enumerate(seq.interval_masks)
    ]
    return SequenceChange(seq.interval_masks, first_change_map(seq.interval_masks), results, "", "truth")


def _class_is_ambiguous(seq, name) -> bool:
    """Buildings built or demolished, a pond appearing or drying: one mask class each, so a class-level
    mask cannot tell which of the two kinds an interval saw."""
    kinds = [k for k, c in CHANGE_MASK_CLASS.items() if MASK_CLASSES[c] == name]
    return len(kinds) > 1 and any(e.kind in kinds for _, e in seq.events)


def test_true_masks_give_the_generator_s_answers():
    right = total = 0
    for index in range(30):
        seq = render_sequence(21, index, 96, 5)
        change = truth_change(seq)
        for q in seq.questions:
            said = answer_temporal(q["question"], change, seq.dates, MASK_CLASSES)
            assert said is not None, q["question"]
            assert said["type"] == q["qtype"], q["question"]
            total += 1
            if said["answer"] == q["answer"]:
                right += 1
            elif not _class_is_ambiguous(seq, said["class"]):
                # the only other way to miss: an event too small to keep as an object
                small = [e for _, e in seq.events if e.footprint(96).sum() < 10]
                assert small, (q, said)
    assert right / total > 0.95


def test_answers_cite_the_intervals_they_come_from():
    seq = next(s for s in (render_sequence(22, i, 96, 6) for i in range(20)) if len(s.changed_intervals) >= 2)
    change = truth_change(seq)
    first = answer_temporal("When did the scene first change?", change, seq.dates, MASK_CLASSES)
    last = answer_temporal("when was the last change?", change, seq.dates, MASK_CLASSES)
    count = answer_temporal("How many times did the scene change?", change, seq.dates, MASK_CLASSES)
    assert first["intervals"] == seq.changed_intervals[:1] and first["source"] == "interval masks (truth)"
    assert first["answer"] == interval_phrase(seq.dates, seq.changed_intervals[0])
    assert last["intervals"] == seq.changed_intervals[-1:]
    assert count["answer"] == str(len(seq.changed_intervals))


def test_never_no_and_not_temporal():
    seq = render_sequence(23, 0, 64, 4)
    empty = SequenceChange(
        np.zeros((3, 64, 64), np.uint8),
        np.full((64, 64), -1, np.int16),
        [
            {"interval": i, **summarize_mask(np.zeros((64, 64), np.uint8), list(MASK_CLASSES))}
            for i in range(3)
        ],
        "",
    )
    assert answer_temporal("when were buildings built?", empty, seq.dates, MASK_CLASSES)["answer"] == "never"
    span = f"did anything change between {seq.dates[0][:4]} and {seq.dates[-1][:4]}?"
    assert answer_temporal(span, empty, seq.dates, MASK_CLASSES)["answer"] == "no"
    assert answer_temporal("how many buildings are there?", empty, seq.dates, MASK_CLASSES) is None


def test_class_words():
    assert asked_class("when were the houses put up?", MASK_CLASSES) == "building"
    assert asked_class("when was the forest cut down?", MASK_CLASSES) == "tree"
    assert asked_class("when did the pond dry up?", MASK_CLASSES) == "water"
    assert asked_class("when did the pond dry up?", ["background", "building"]) is None
