"""Change encoders: the papers' ways of turning two dates' features into change tokens.

Every encoder is a :class:`ChangeEncoder`: ``encoder(feat_a, feat_b)`` maps the last backbone level of
A and B (``[B, C, h, w]`` each) to tokens ``[B, N, encoder.out_dim]``. Pick one by name:

* ``rsiccformer``: each date attends to B - A (Liu et al. 2022, RSICCformer).
* ``chg2cap``: shared self-attention, joint attention over ``[A; B]``, cosine fusion (Chang et al. 2023).
* ``bicross``: bi-directional difference-aware cross-attention (MCI, Liu et al. 2024, Change-Agent).
* ``sen``: single-stream, for a 6-channel backbone on ``concat(A, B)`` (Zhou et al. 2024, SEN).
"""

from __future__ import annotations

from changescope.errors import ChangescopeError
from changescope.models.encoders.base import ChangeEncoder
from changescope.models.encoders.bicross import BiCrossEncoder
from changescope.models.encoders.chg2cap import Chg2CapEncoder
from changescope.models.encoders.rsiccformer import RSICCformerEncoder
from changescope.models.encoders.sen import SENEncoder

ENCODERS: dict[str, type[ChangeEncoder]] = {
    "rsiccformer": RSICCformerEncoder,
    "chg2cap": Chg2CapEncoder,
    "bicross": BiCrossEncoder,
    "sen": SENEncoder,
}


def build_encoder(name: str, in_channels: int, **kwargs) -> ChangeEncoder:
    """``ENCODERS[name](in_channels, **kwargs)`` with a one-line error for an unknown name."""
    if name not in ENCODERS:
        raise ChangescopeError(f"unknown change encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
    return ENCODERS[name](in_channels, **kwargs)


__all__ = [
    "ENCODERS",
    "BiCrossEncoder",
    "ChangeEncoder",
    "Chg2CapEncoder",
    "RSICCformerEncoder",
    "SENEncoder",
    "build_encoder",
]
