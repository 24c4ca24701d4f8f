"""Objects in a mask (``changescope.postprocess``): 8-connected labelling, boxes, small-object removal,
summaries, against an independent flood fill."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from test_detection import flood_fill_components, hand_made_mask

from changescope.postprocess import (
    CONNECTIVITY,
    MIN_AREA,
    boxes_from_mask,
    component_boxes,
    component_sizes,
    label_components,
    remove_small_objects,
    summarize_mask,
)

CLASSES = ["background", "road", "building"]


def random_masks(count: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        h, w = rng.integers(1, 40, 2)
        masks.append(rng.random((h, w)) < rng.uniform(0.05, 0.8))
    return masks


def test_labels_equal_an_independent_flood_fill_in_raster_order():
    for mask in random_masks():
        labels, n = label_components(mask)
        components = flood_fill_components(mask)  # found in raster order of each first pixel
        assert labels.dtype == np.int64 and labels.shape == mask.shape and n == len(components)
        assert np.array_equal(labels != 0, mask)
        for number, pixels in enumerate(components, start=1):
            ys, xs = np.array(pixels).T
            assert (labels[ys, xs] == number).all() and (labels == number).sum() == len(pixels)
        assert component_sizes(mask).tolist() == [len(c) for c in components]


def test_a_long_winding_component_is_one_object():
    snake = np.zeros((41, 41), bool)
    snake[::4, :] = True
    snake[1::8, -1] = snake[2::8, -1] = snake[3::8, -1] = True
    snake[5::8, 0] = snake[6::8, 0] = snake[7::8, 0] = True
    labels, n = label_components(snake)
    assert n == 1 and np.array_equal(labels, snake.astype(np.int64))


def test_pixels_touching_at_a_corner_are_one_object():
    assert CONNECTIVITY == 8
    for mask in (np.eye(5, dtype=bool), np.fliplr(np.eye(5, dtype=bool))):
        labels, n = label_components(mask)
        assert n == 1 and (labels[mask] == 1).all()
        assert boxes_from_mask(mask) == [(0.0, 0.0, 1.0, 1.0)]
    apart = np.zeros((3, 3), bool)
    apart[0, 0] = apart[2, 2] = True  # a pixel between them: not touching
    assert label_components(apart)[1] == 2


def test_boxes_are_pixel_edges_over_the_image_size():
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 0] = 3  # any non-zero value is foreground
    assert component_boxes(mask) == [(0.0, 0.0, 1 / 5, 1 / 4)]
    assert component_boxes(np.ones((4, 5))) == [(0.0, 0.0, 1.0, 1.0)]
    for mask in random_masks(seed=1):
        h, w = mask.shape
        boxes = component_boxes(mask)
        components = flood_fill_components(mask)
        assert len(boxes) == len(components)
        for box, pixels in zip(boxes, components, strict=True):
            ys, xs = np.array(pixels).T
            assert box == (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
            assert all(0.0 <= v <= 1.0 for v in box) and box[0] < box[2] and box[1] < box[3]
            assert all(type(v) is float for v in box)


def test_box_order_and_min_pixels():
    mask = np.zeros((8, 10), bool)
    for i in range(6):
        mask[i, 5 - i] = True  # a diagonal from (0, 5) to (5, 0): box from x = 0
    mask[0, 2] = True  # a single pixel before the diagonal's first pixel in raster order
    diagonal, dot = (0.0, 0.0, 6 / 10, 6 / 8), (2 / 10, 0.0, 3 / 10, 1 / 8)
    assert component_boxes(mask) == boxes_from_mask(mask) == [dot, diagonal]  # raster: first pixels
    assert component_boxes(mask, order="top_left") == [diagonal, dot]  # by (y0, x0)
    assert component_boxes(mask, min_pixels=2) == [diagonal]
    with pytest.raises(ValueError, match="order"):
        component_boxes(mask, order="area")


def test_remove_small_objects_is_per_class_and_leaves_the_input_alone():
    mask = hand_made_mask()
    before = mask.copy()
    cleaned = remove_small_objects(mask)  # MIN_AREA
    assert MIN_AREA == 10 and np.array_equal(cleaned, remove_small_objects(mask, 10))
    assert np.array_equal(mask, before) and cleaned.dtype == mask.dtype
    # the 2 px building touching the road is its own (small) object: removed, the road stays
    assert cleaned[14, 10:12].sum() == 0 and (cleaned[15] == 1).all()
    assert np.array_equal(remove_small_objects(mask, 1), mask)
    assert np.array_equal(remove_small_objects(mask, 0), mask)
    assert remove_small_objects(mask, 10**6).sum() == 0


def test_area_count_and_box_arithmetic_on_a_hand_made_mask():
    mask = hand_made_mask()
    cleaned = remove_small_objects(mask, min_area=10)
    assert cleaned[10:12, 30:32].sum() == 0 and cleaned[14, 10:12].sum() == 0 and cleaned[6, 7] == 2
    assert (cleaned[2:6, 3:7] == 2).all() and (cleaned[15] == 1).all()

    summary = summarize_mask(cleaned, CLASSES)
    building, road = summary["classes"]["building"], summary["classes"]["road"]
    assert building["pixels"] == 17 and building["objects"] == 1
    assert building["percent"] == pytest.approx(100 * 17 / 800)
    # boxes are pixel edges over width / height: columns 3..7 -> [3/40, 8/40], rows 2..6 -> [2/20, 7/20]
    assert building["boxes"] == [[3 / 40, 2 / 20, 8 / 40, 7 / 20]]
    assert road["boxes"] == [[0.0, 15 / 20, 1.0, 16 / 20]] and road["object_areas"] == [40]
    assert summary["objects"] == 2 and summary["changed_pixels"] == 57 and summary["size"] == [40, 20]

    # without cleaning every blob counts, in raster order of its first pixel
    raw = summarize_mask(mask, CLASSES)
    assert raw["classes"]["building"]["objects"] == 3
    assert raw["classes"]["building"]["object_areas"] == [17, 4, 2]


def test_counts_equal_an_independent_labelling_on_a_random_mask():
    rng = np.random.default_rng(0)
    mask = (rng.random((48, 48)) < 0.3).astype(np.uint8) * rng.integers(1, 3, (48, 48)).astype(np.uint8)
    cleaned = remove_small_objects(mask, min_area=3)
    summary = summarize_mask(cleaned, CLASSES)
    for cls, name in enumerate(CLASSES[1:], start=1):
        components = flood_fill_components(cleaned == cls)
        assert summary["classes"][name]["objects"] == len(components)
        assert sorted(summary["classes"][name]["object_areas"]) == sorted(len(c) for c in components)
        assert min(map(len, components)) >= 3
        # raw mask: every component the BFS finds below 3 px is gone from the cleaned mask
        small = [c for c in flood_fill_components(mask == cls) if len(c) < 3]
        assert all(cleaned[y, x] == 0 for c in small for y, x in c)


def test_an_empty_mask_has_no_objects():
    empty = np.zeros((6, 7), np.uint8)
    labels, n = label_components(empty)
    assert n == 0 and not labels.any() and labels.shape == (6, 7)
    assert component_boxes(empty) == [] and component_sizes(empty).size == 0
    assert np.array_equal(remove_small_objects(empty), empty)
    summary = summarize_mask(empty, CLASSES)
    assert summary["objects"] == 0 and summary["changed_pixels"] == 0
    assert summary["classes"]["road"] == {
        "pixels": 0,
        "percent": 0.0,
        "objects": 0,
        "boxes": [],
        "object_areas": [],
    }


def test_tensors_are_accepted_and_masks_must_be_2d():
    mask = torch.zeros(3, 4, dtype=torch.uint8)
    mask[1, 1:3] = 1
    assert boxes_from_mask(mask) == [(0.25, 1 / 3, 0.75, 2 / 3)]
    with pytest.raises(ValueError, match="2-D"):
        label_components(np.ones((1, 3, 4)))


def test_the_module_does_not_import_torch():
    code = "import sys, changescope.postprocess; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
