"""A ChangeLLM's numbers against its vision model's mask (``tasks.llm_evidence``), and its free-text replies
mapped to closed answers for the VQA tables (``tasks.llm_evaluation.closed_answer``)."""

from __future__ import annotations

import numpy as np
import pytest

from changescope.postprocess import summarize_mask
from changescope.tasks.llm_evaluation import closed_answer
from changescope.tasks.llm_evidence import citation, cited, stated_numbers

CLASSES = ["background", "road", "building", "tree", "water"]


@pytest.fixture
def summary():
    """Two buildings and one road on a 100 x 100 mask: 3 objects, 6 % of the image changed."""
    mask = np.zeros((100, 100), np.uint8)
    mask[0:10, 0:20] = 2  # 200 px
    mask[50:60, 50:70] = 2  # 200 px
    mask[90:95, 0:40] = 1  # 200 px
    return summarize_mask(mask, CLASSES)


def test_stated_numbers_reads_digits_words_and_percentages():
    assert stated_numbers("three new buildings and 2 roads") == ([3, 2], [])
    assert stated_numbers("about 12 % of the image") == ([], [12.0])
    assert stated_numbers("less than 1 % of the image") == ([], [0.5])
    assert stated_numbers("4.5 percent changed") == ([], [4.5])
    assert stated_numbers("a road is built") == ([], [])


def test_counts_are_cited_per_named_class_and_checked(summary):
    right = citation("How many buildings were built?", "2", summary)
    assert right["kind"] == "count" and right["class"] == "building" and right["objects"] == 2
    assert right["agrees"] and right["stated"]["counts"] == [2]
    wrong = citation("How many buildings were built?", "five", summary)
    assert not wrong["agrees"] and wrong["objects"] == 2
    assert cited("five", wrong) == "five [change mask: 2 buildings, 4.0 % of the image]"
    total = citation("Describe what changed.", "three houses are built at the top", summary)
    assert total["class"] is None and total["objects"] == 3 and total["agrees"]
    one_road = cited("x", citation("how many roads?", "1", summary))
    assert one_road.endswith("[change mask: 1 road, 2.0 % of the image]")


def test_shares_and_change_or_not_are_cited(summary):
    assert citation("How much of the image changed?", "about 6 % of the image", summary)["agrees"]
    assert citation("How much of the image changed?", "about 5 % of the image", summary)["agrees"]  # within 2
    far = citation("How much of the image changed?", "about 40 % of the image", summary)
    assert far["kind"] == "area" and not far["agrees"] and far["changed_percent"] == 6.0
    assert not citation("How much of the image changed?", "none of it", summary)["agrees"]
    # CDVQA-style ratio bins, and a bare number in percent
    assert citation("what is the ratio of the changed area?", "0 to 10", summary)["agrees"]
    assert not citation("what is the ratio of the changed area?", "10_to_20", summary)["agrees"]
    assert not citation("what percentage of the area has changed?", "0", summary)["agrees"]
    # a change mask's class is what changed, built or demolished
    gone = citation("How many buildings were demolished?", "3", summary)
    assert gone["class"] == "building" and gone["objects"] == 2 and not gone["agrees"]
    assert citation("How many roads were built?", "none", summary)["stated"]["counts"] == [0]
    assert citation("Did anything change?", "yes", summary)["agrees"]
    water = citation("Has the water changed?", "yes", summary)  # a class with no object in the mask
    assert water["class"] == "water" and water["objects"] == 0 and not water["agrees"]
    assert citation("What has the grass changed into?", "buildings", summary) is None
    said_no = citation("Did anything change?", "no", summary)
    assert said_no["kind"] == "changed" and not said_no["agrees"]
    assert not citation("What changed here?", "the two scenes seem identical", summary)["agrees"]
    empty = summarize_mask(np.zeros((10, 10), np.uint8), CLASSES)
    assert citation("Did anything change?", "no", empty)["agrees"]
    # no number, no change / no change: nothing to cite; no mask: nothing to cite with
    assert citation("What changed here?", "a road is built", summary) is None
    assert citation("How many buildings were built?", "2", None) is None
    assert cited("a road is built", None) == "a road is built"


def test_replies_map_to_closed_answers():
    ratio = ["0", "0_to_10", "10_to_20"]
    assert closed_answer("about 3 % of the image", ratio) == "0_to_10"
    assert closed_answer("none of it", ratio) == "0"
    assert closed_answer("no change has occurred", ratio) == "0"
    assert closed_answer("15%", ratio) == "10_to_20"
    assert closed_answer("Yes, a road was built.", ["no", "yes"]) == "yes"
    assert closed_answer("three", [str(n) for n in range(10)]) == "3"
    assert closed_answer("bare ground", ["bare_ground", "buildings"]) == "bare_ground"
    assert closed_answer("they became buildings", ["bare_ground", "buildings"]) == "buildings"
    assert closed_answer("buildings and water", ["buildings", "water"]) is None  # two candidates: no answer
    assert closed_answer("maybe", ["no", "yes"]) is None
