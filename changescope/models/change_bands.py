"""One model, two change heads: one for aerial imagery, one for coarse (satellite) imagery.

A change head trained to find roofs at 0.25 - 1.5 m (``data/paste.py``) lost points at 10 and 30 m, where
the earlier head was better (RESULTS.md, "Roofs pasted into real pairs"). Both heads read the same frozen
features, change tokens and class log-probabilities, so they can live in one model: inputs whose GSD is
known to be ``coarse_gsd`` m / px or coarser read the coarse head (``ChangeModel.change_head_for``), every
other input (finer, or of unknown GSD such as a plain PNG) the fine one.
"""

from __future__ import annotations

import torch

from changescope.models.change_model import ChangeModel
from changescope.models.config import ModelConfig

HEAD, COARSE_HEAD = "change_head.", "coarse_change_head."


def with_coarse_head(fine: ChangeModel, coarse: ChangeModel, coarse_gsd: float) -> ChangeModel:
    """``fine`` with ``coarse``'s change head and threshold as its head for inputs of ``coarse_gsd`` m / px
    or coarser. Every other tensor of the two models must be equal (two change heads trained from one
    model with everything else fixed, as ``train --init MODEL --tasks mask`` does); a ValueError names the
    first that is not."""
    if coarse_gsd <= 0:
        raise ValueError(f"coarse_gsd must be positive, got {coarse_gsd}")
    for name, model in (("fine", fine), ("coarse", coarse)):
        if model.change_head is None or model.coarse_change_head is not None:
            raise ValueError(f"the {name} model must have exactly one change head")
    fine_state, coarse_state = fine.state_dict(), coarse.state_dict()
    if fine_state.keys() != coarse_state.keys():
        raise ValueError("the two models have different architectures")
    for name, tensor in fine_state.items():
        if not name.startswith(HEAD) and not torch.equal(tensor, coarse_state[name]):
            raise ValueError(f"tensor {name} differs between the models: only the change heads may differ")
    config = ModelConfig.from_dict(fine.config.to_dict())
    config.coarse_gsd, config.coarse_change_threshold = float(coarse_gsd), coarse.config.change_threshold
    config.backbone_pretrained = False  # every tensor comes from the two models
    model = ChangeModel(config)
    state = dict(fine_state)
    state.update({COARSE_HEAD + k[len(HEAD) :]: v for k, v in coarse_state.items() if k.startswith(HEAD)})
    model.load_state_dict(state)
    model.set_precision(fine.precision).set_tta(fine.tta)
    return model.eval()
