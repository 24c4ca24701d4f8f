"""Paper-comparable metrics (DESIGN.md section 6): captions, change detection, VQA, grounding, retrieval.

Each module states its protocol in its docstring; caption scores come from pycocoevalcap itself.
"""

from changescope.metrics.captions import caption_protocol, caption_scores, evaluate_captions
from changescope.metrics.grounding import grounding_scores
from changescope.metrics.retrieval import bidirectional, retrieval_scores
from changescope.metrics.score import score_predictions
from changescope.metrics.segmentation import ConfusionMatrix
from changescope.metrics.vqa import vqa_scores
from changescope.postprocess import boxes_from_mask, label_components

__all__ = [
    "ConfusionMatrix",
    "bidirectional",
    "boxes_from_mask",
    "caption_protocol",
    "caption_scores",
    "evaluate_captions",
    "grounding_scores",
    "label_components",
    "retrieval_scores",
    "score_predictions",
    "vqa_scores",
]
