"""changescope: what changed here, where, and how much, from images of one place at several times."""

__version__ = "0.1.0"
