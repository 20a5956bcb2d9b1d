"""Atomic checkpoint writing, clear errors for unreadable checkpoints and a best checkpoint that survives `--c`,
shared by our trainers."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from sadm_nnunet.errors import InputError
from sadm_nnunet.io_utils import atomic_path

BEST_CHECKPOINT = "checkpoint_best.pth"
UNREADABLE = (RuntimeError, EOFError, KeyError, ValueError, OSError, pickle.UnpicklingError)


def unreadable_message(path: Path, error: BaseException, writer: str) -> str:
    return (f"Could not load checkpoint {path} ({path.stat().st_size} bytes): {type(error).__name__}: "
            f"{' '.join(str(error).split())}. The file is truncated or was not written by {writer}; delete it and "
            f"continue from another checkpoint (checkpoint_best.pth / checkpoint_latest.pth) or retrain.")


def check_checkpoint(path: str | os.PathLike, writer: str = "nnUNetv2_train") -> dict:
    """The checkpoint in `path` (loaded on the CPU), or an InputError naming the file and its size when it is
    missing, truncated or not a checkpoint (torch.load's own errors do neither)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except UNREADABLE as e:
        raise InputError(unreadable_message(path, e, writer)) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise InputError(f"Checkpoint {path} ({path.stat().st_size} bytes) holds {found}; expected an nnU-Net "
                         f"checkpoint with 'network_weights' written by {writer}")
    return checkpoint


class AtomicCheckpointMixin:
    """Mixin for nnUNetTrainer subclasses: checkpoints are written to a temporary file and renamed into place, and
    a truncated or foreign checkpoint gives an error that names the file instead of an unpickling traceback.

    nnU-Net writes checkpoint_latest.pth in an epoch before it updates the best moving-average score of that
    epoch, so a run resumed with `--c` starts without knowing its best score and would overwrite
    checkpoint_best.pth with the next, possibly worse, epoch. On resuming, the best score is taken from
    checkpoint_best.pth."""

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
            super().load_checkpoint(str(path))
        except UNREADABLE as e:
            raise RuntimeError(unreadable_message(path, e, type(self).__name__)) from e
        self._restore_best_score(path)

    def _restore_best_score(self, loaded: Path) -> None:
        best_file = Path(self.output_folder) / BEST_CHECKPOINT
        if not best_file.is_file() or best_file.resolve() == loaded.resolve():
            return
        try:
            best = torch.load(best_file, map_location="cpu", weights_only=False).get("_best_ema")
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
            self.print_to_log_file(f"WARNING: {best_file} is unreadable ({type(e).__name__}: {e}); the best score "
                                   f"restarts from this run and the file will be overwritten by its best epoch")
            return
        if best is not None and (self._best_ema is None or best > self._best_ema):
            self._best_ema = best
