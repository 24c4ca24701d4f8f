"""The class vocabularies of SynthChange: change-mask classes, land-cover classes and change types.

Kept in one small module so the generator, the reader and the documentation agree on ids, names and
label colours.
"""

from __future__ import annotations

#: change-mask classes, index = class id (docs/SYNTHCHANGE.md)
MASK_CLASSES = ("background", "road", "building", "tree", "water")
BACKGROUND, ROAD, BUILDING, TREE, WATER = range(5)

#: label PNG colours; channel 0 alone reads as LEVIR-MCI (128 road, 255 building, 0 otherwise)
LABEL_COLORS: dict[int, tuple[int, int, int]] = {
    BACKGROUND: (0, 0, 0),
    ROAD: (128, 128, 128),
    BUILDING: (255, 255, 255),
    TREE: (0, 255, 0),
    WATER: (0, 0, 255),
}

#: when the footprints of several changed objects overlap, the pixel takes the first class listed here
MASK_PRIORITY = (BUILDING, ROAD, WATER, TREE)

#: land-cover classes of the before / after maps behind the VQA answers (the names are the answers)
LAND_COVER = ("grass", "bare_ground", "roads", "buildings", "trees", "water")
LC_GRASS, LC_BARE, LC_ROAD, LC_BUILDING, LC_TREE, LC_WATER = range(6)

#: change types: what an event does, the mask class of its pixels, and the land cover it leaves behind
CHANGE_TYPES = (
    "buildings_built",
    "buildings_demolished",
    "roads_built",
    "trees_cleared",
    "water_appeared",
    "water_dried",
)
CHANGE_MASK_CLASS = {
    "buildings_built": BUILDING,
    "buildings_demolished": BUILDING,
    "roads_built": ROAD,
    "trees_cleared": TREE,
    "water_appeared": WATER,
    "water_dried": WATER,
}
