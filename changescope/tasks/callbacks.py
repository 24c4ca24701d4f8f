"""Lightning callbacks every training run uses (change models and ChangeLLMs alike)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from changescope.errors import require
from changescope.fileio import write_text_atomic

pl = require("lightning.pytorch", "train", "training")


class AtomicCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's checkpoint callback, but a checkpoint appears under its name only once fully written."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        tmp = f"{filepath}.part"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


class MetricsLog(pl.Callback):
    """Keeps one row per epoch (training loss, validation metrics) and rewrites ``OUT/metrics.jsonl``.

    The rows are part of the checkpoint, so a resumed run's file lists every epoch exactly once.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_validation_end(self, trainer, task):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update(
            {
                k: round(float(v), 6)
                for k, v in sorted(trainer.callback_metrics.items())
                if k.startswith(("val/", "train/loss_epoch"))
            }
        )
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])
