"""Test-time views: the dihedral flips and turns of a square image, and their inverses.

A change map should not depend on which way up the pair was photographed, and the change head was trained
with random quarter turns and mirrors; averaging its logits over several such views of the same pair
(test-time augmentation) removes part of the noise of one view (RESULTS.md, "Test-time views").
The first ``n`` of :data:`VIEWS` are used; 1, 2, 4 and 8 are groups, so a flipped input gives the
flipped average: the identity; a left-right mirror; the up-down mirror and the half turn; then the same
four after a transpose (the quarter turns and the two diagonal mirrors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changescope.errors import ChangescopeError

if TYPE_CHECKING:  # torch-free at import: the config and the CLI check view counts before torch loads
    from torch import Tensor

#: (transpose first, flipped dims) of each view, identity first
VIEWS: tuple[tuple[bool, tuple[int, ...]], ...] = (
    (False, ()),
    (False, (-1,)),
    (False, (-2,)),
    (False, (-2, -1)),
    (True, ()),
    (True, (-1,)),
    (True, (-2,)),
    (True, (-2, -1)),
)
#: view counts that form a group (closed under flipping the input)
VIEW_COUNTS = (1, 2, 4, 8)


def check_views(n: int) -> int:
    if n not in VIEW_COUNTS:
        raise ChangescopeError(
            f"--tta (test-time views) must be one of {', '.join(map(str, VIEW_COUNTS))}, got {n}"
        )
    return n


def apply_view(x: Tensor, k: int) -> Tensor:
    """View ``k`` of ``x`` (any leading dims, the last two square)."""
    transpose, dims = VIEWS[k]
    if transpose:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"views 4-7 turn the image and need it square, got {tuple(x.shape[-2:])}")
        x = x.transpose(-1, -2)
    return x.flip(dims) if dims else x


def invert_view(y: Tensor, k: int) -> Tensor:
    """Map ``y`` computed on view ``k`` back to the original orientation."""
    transpose, dims = VIEWS[k]
    y = y.flip(dims) if dims else y
    return y.transpose(-1, -2) if transpose else y
