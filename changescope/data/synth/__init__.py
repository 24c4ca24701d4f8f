"""SynthChange: a procedural generator of aerial-looking bi-temporal scenes with exact change labels.

``generate(out, pairs)`` writes a dataset in the LEVIR-MCI layout plus JSONL records (VQA, grounding,
retrieval); ``make_pair(seed, index)`` returns one pair with its painted objects and change events;
``make_gallery(png)`` draws a contact sheet. The format and the rules are in docs/SYNTHCHANGE.md.
"""

from changescope.data.synth.classes import CHANGE_TYPES, LABEL_COLORS, LAND_COVER, MASK_CLASSES
from changescope.data.synth.gallery import make_gallery
from changescope.data.synth.scene import Event, SynthPair, make_pair
from changescope.data.synth.writer import GENERATOR_VERSION, generate

__all__ = [
    "CHANGE_TYPES",
    "GENERATOR_VERSION",
    "LABEL_COLORS",
    "LAND_COVER",
    "MASK_CLASSES",
    "Event",
    "SynthPair",
    "generate",
    "make_gallery",
    "make_pair",
]
