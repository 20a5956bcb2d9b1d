"""Atomic checkpoint writing and clear errors for unreadable checkpoints, shared by our trainers."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

from sadm_nnunet.io_utils import atomic_path


class AtomicCheckpointMixin:
    """Mixin for nnUNetTrainer subclasses: checkpoints are written to a temporary file and renamed into place, and
    a truncated or foreign checkpoint gives an error that names the file instead of an unpickling traceback."""

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        with atomic_path(filename) as tmp:
            super().save_checkpoint(str(tmp))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, (str, os.PathLike)):
            return super().load_checkpoint(filename_or_checkpoint)
        path = Path(filename_or_checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint {path} does not exist")
        try:
            return super().load_checkpoint(str(path))
        except (RuntimeError, EOFError, KeyError, ValueError, OSError, pickle.UnpicklingError) as e:
            raise RuntimeError(
                f"Could not load checkpoint {path} ({path.stat().st_size} bytes): {type(e).__name__}: {e}. "
                f"The file is truncated or was not written by {type(self).__name__}; delete it and continue from "
                f"another checkpoint (checkpoint_best.pth / checkpoint_latest.pth) or retrain.") from e
