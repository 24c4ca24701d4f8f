import os
from pathlib import Path

import pytest
import torch

# Small tensors run faster on one thread, and the 2-core CI machine is not oversubscribed by pytest + torch.
torch.set_num_threads(1)

#: set by .ci/run: there every input a test needs must be present, so a skip is a failure
IN_CI = os.environ.get("CHANGESCOPE_CI") == "1"


def _realdata() -> Path:
    """The real labelled pairs: $CHANGESCOPE_REALDATA, else ``../shared/realdata`` beside the checkout, else
    the project machines' shared folder (a clean CI checkout may live elsewhere, e.g. under /tmp)."""
    given = os.environ.get("CHANGESCOPE_REALDATA")
    candidates = [Path(given)] if given else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "realdata", Path("/work/shared/realdata")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


REALDATA = _realdata()


def missing_input(reason: str) -> None:
    """A test input is absent: fail under CI (it must test what it says), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"missing test input under CHANGESCOPE_CI=1: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI every skip (a missing extra, Java, Chromium, ../shared, a fetched file) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CHANGESCOPE_CI=1, where every test input must be present: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (``pytest.importorskip`` of a missing extra)."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CHANGESCOPE_CI=1: {report.longrepr}"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """64 SynthChange pairs at 64 px (train / val / test), one copy per test module."""
    from changescope.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "s64"
    generate(root, pairs=64, size=64, seed=5)
    return root


@pytest.fixture(scope="session")
def change_llm(tmp_path_factory):
    """A saved tiny ChangeLLM (``llm-tiny``: a random Llama, the packaged SmolLM2 tokenizer, the shipped
    default as its vision model); skipped without the llm extra (peft)."""
    pytest.importorskip("peft", reason="the llm extra (peft) is not installed")
    from changescope.models.llm_hub import build_change_llm, save_change_llm

    torch.manual_seed(0)
    model, processor = build_change_llm("llm-tiny")
    folder = tmp_path_factory.mktemp("change-llm") / "model"
    save_change_llm(model.eval(), processor, folder)
    return folder
