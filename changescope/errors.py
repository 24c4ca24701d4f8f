"""Errors users can act on.

Every error raised for bad input names the file (or argument) and the problem in one line; the CLI prints
``str(error)`` and exits non-zero without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class ChangescopeError(Exception):
    """Base class: the message is one line a user can act on."""


class DataError(ChangescopeError):
    """A file or directory does not hold what its format promises."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class MissingDependencyError(ChangescopeError):
    """An optional extra is needed for this feature."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(f"{feature} needs the '{package}' package: pip install 'changescope[{extra}]'")


def require(module: str, extra: str, feature: str):
    """Import an optional dependency or raise a one-line install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(module.split(".")[0], extra, feature) from err
