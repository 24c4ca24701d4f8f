"""changescope: what changed here, where, and how much, from images of one place at several times.

``changescope.load("default")`` gives the Python API (``changescope.api.ChangePipeline``); it is imported on
first use, so ``import changescope`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["ChangePipeline", "__version__", "load"]


def __getattr__(name: str):
    if name in ("load", "ChangePipeline"):
        from changescope import api

        return getattr(api, name)
    raise AttributeError(f"module 'changescope' has no attribute {name!r}")
