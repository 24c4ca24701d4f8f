"""One model, two change heads: one for aerial imagery, one for coarse (satellite) imagery.

A change head trained to find roofs at 0.25 - 1.5 m (``data/paste.py``) lost points at 10 and 30 m, where
the earlier head was better (RESULTS.md, "Roofs pasted into real pairs"). Both heads read the same frozen
features, change tokens and class log-probabilities, so they can live in one model: inputs whose GSD is
known to be ``coarse_gsd`` m / px or coarser read the coarse head (``ChangeModel.change_head_for``), every
other input (finer, or of unknown GSD such as a plain PNG) the fine one, unless the model has a GSD probe
(``heads/gsd_probe.py``, ``with_gsd_probe``), which sends inputs of unknown GSD that look coarse to the
coarse head.
"""

from __future__ import annotations

import torch

from changescope.models.change_model import ChangeModel
from changescope.models.config import ModelConfig

HEAD, COARSE_HEAD, PROBE = "change_head.", "coarse_change_head.", "gsd_probe."


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


def with_gsd_probe(model: ChangeModel, weight: torch.Tensor, bias: torch.Tensor) -> ChangeModel:
    """``model`` (two change heads) with a GSD probe of these weights (``heads.gsd_probe.fit_probe``):
    inputs of unknown GSD that it takes for coarse imagery then read the coarse head. Every other tensor is
    ``model``'s."""
    if model.coarse_change_head is None:
        raise ValueError("a GSD probe picks between two change heads: this model has one")
    config = ModelConfig.from_dict(model.config.to_dict())
    config.gsd_probe = True
    config.backbone_pretrained = False  # every tensor comes from the model
    probed = ChangeModel(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(PROBE)}
    state[PROBE + "linear.weight"] = weight.reshape(1, -1).float()
    state[PROBE + "linear.bias"] = bias.reshape(1).float()
    probed.load_state_dict(state)
    probed.set_precision(model.precision).set_tta(model.tta)
    return probed.eval()
