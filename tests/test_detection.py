"""Overlays, detection files and the classical difference baseline; the flood fill and hand-made mask
that ``test_postprocess`` checks object counts, areas and boxes with."""

from collections import deque

import numpy as np
import torch
from PIL import Image

from changescope.data.readers import open_dataset
from changescope.data.synth import generate
from changescope.metrics.segmentation import ConfusionMatrix
from changescope.metrics.table import detection_table
from changescope.models.baselines import DifferenceBaseline
from changescope.overlay import CLASS_COLOURS, overlay
from changescope.postprocess import summarize_mask

CLASSES = ["background", "road", "building"]


def flood_fill_components(binary: np.ndarray) -> list[list[tuple[int, int]]]:
    """An independent, obvious 8-connected labelling (breadth-first search) to check against."""
    seen = np.zeros_like(binary, bool)
    components = []
    for y, x in zip(*np.nonzero(binary), strict=True):
        if seen[y, x]:
            continue
        queue, pixels = deque([(y, x)]), []
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            pixels.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    inside = 0 <= ny < binary.shape[0] and 0 <= nx < binary.shape[1]
                    if inside and binary[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        components.append(pixels)
    return components


def hand_made_mask() -> np.ndarray:
    mask = np.zeros((20, 40), np.uint8)
    mask[2:6, 3:7] = 2  # building, 16 px
    mask[10:12, 30:32] = 2  # building, 4 px: below min_area 10
    mask[15, 0:40] = 1  # road across the image, 40 px
    mask[14, 10:12] = 2  # building of 2 px touching the road: its own object (another class)
    mask[6, 7] = 2  # touches the first building's corner (5, 6) diagonally: the same object
    return mask


def test_overlay_tints_changed_pixels_in_levir_mci_colours_and_draws_a_legend():
    image = np.full((64, 96, 3), 100, np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[40:60, 60:90] = 2
    mask[50, :] = 1
    picture = np.asarray(overlay(image, mask, CLASSES))
    assert picture.shape == (64, 96, 3)
    building = picture[45, 80].astype(int)
    assert building[0] > 150 and building[1] < 100  # red
    road = picture[50, 40].astype(int)
    assert road[0] > 150 and road[1] > 150 and road[2] < 100  # yellow
    assert (picture[30, 50] == 100).all()  # untouched
    assert (picture[1, 1] == 255).all()  # the legend's white box, top left
    assert CLASS_COLOURS["road"] == (255, 255, 0) and CLASS_COLOURS["building"] == (255, 0, 0)


def test_difference_baseline_finds_a_painted_square_and_fits_on_synthchange(tmp_path):
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.random((3, 64, 64), dtype=np.float32) * 0.1 + 0.4)
    b = a.clone()
    b[:, 20:40, 10:30] = 0.95
    pred = DifferenceBaseline(threshold=0.3, kernel=3).predict(torch.stack([a, b]))
    assert pred[20:40, 10:30].float().mean() > 0.95 and pred.sum() == 400

    root = tmp_path / "s"
    generate(root, pairs=24, size=64, seed=2)
    train = open_dataset(root, "train")
    baseline = DifferenceBaseline().fit(train, pairs=12)
    assert 0.04 <= baseline.threshold <= 0.6 and 1 <= baseline.change_class < len(train.classes)


def test_detection_table_lists_every_class_and_the_means():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]))
    text = detection_table(cm.compute(CLASSES))
    assert "building" in text and "mIoU without background" in text and "road" in text


def test_write_detection_leaves_complete_files_only(tmp_path):
    from changescope.tasks.detection import Detection, write_detection

    mask = hand_made_mask()
    detection = Detection(
        mask, {"caption": "x", **summarize_mask(mask, CLASSES)}, np.zeros((20, 40, 3), np.uint8)
    )
    out = write_detection(detection, CLASSES, tmp_path / "d")
    assert sorted(p.name for p in out.iterdir()) == ["mask.png", "overlay.png", "result.json"]
    assert np.array_equal(np.asarray(Image.open(out / "mask.png")), mask)
