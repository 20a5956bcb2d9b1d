"""What our nnU-Net trainers share beyond nnU-Net's own: the network without its DDP/torch.compile wrappers, run
lengths that variants declare as class attributes, and progress lines within an epoch."""
from __future__ import annotations

from time import perf_counter

import numpy as np
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel


class SADMTrainerMixin:
    """Mixin for nnUNetTrainer subclasses.

    `run_length` maps nnU-Net's run-length attributes (num_epochs, num_iterations_per_epoch,
    num_val_iterations_per_epoch, save_every) to values; a variant sets it as a class attribute and the trainer's
    `__init__` calls `apply_run_length()` after nnU-Net's, which sets the defaults. (nnU-Net rebuilds its init
    kwargs from the most derived `__init__`'s signature, so variants must not define `__init__` with other
    parameters; with this they need none at all.)
    """

    run_length: dict[str, int] = {}
    # lines of progress per training epoch (nnU-Net itself prints nothing between "Epoch N" and the epoch's end)
    progress_lines_per_epoch = 10

    def apply_run_length(self) -> None:
        for name, value in self.run_length.items():
            if not hasattr(self, name):
                raise AttributeError(f"{type(self).__name__}.run_length sets '{name}', which nnUNetTrainer does "
                                     f"not have")
            setattr(self, name, value)

    def unwrapped_network(self) -> nn.Module:
        """The network itself, unwrapped from DDP and torch.compile. Decided by the wrappers' types, not by
        `is_ddp`: nnU-Net's `initialize` calls `configure_optimizers` (which needs this) before it wraps the network
        in DDP."""
        mod = self.network
        if isinstance(mod, DistributedDataParallel):
            mod = mod.module
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._epoch_losses: list[float] = []
        self._epoch_started = perf_counter()

    def report_progress(self, loss: float) -> None:
        """Records one training iteration's loss (call from train_step; on_train_epoch_start resets the count);
        every 1/progress_lines_per_epoch of the epoch prints the iteration count, the epoch's running mean loss
        and the seconds since the epoch started."""
        self._epoch_losses.append(float(loss))
        done, total = len(self._epoch_losses), self.num_iterations_per_epoch
        if done % max(1, total // self.progress_lines_per_epoch) == 0 and done < total:
            self.print_to_log_file(f"iteration {done}/{total}: mean train loss {np.mean(self._epoch_losses):.4f}, "
                                   f"{perf_counter() - self._epoch_started:.0f} s")
