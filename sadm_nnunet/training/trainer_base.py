"""What our nnU-Net trainers share beyond nnU-Net's own: the network without its DDP/torch.compile wrappers, and
run lengths that variants declare as class attributes."""
from __future__ import annotations

from torch import nn
from torch._dynamo import OptimizedModule


class SADMTrainerMixin:
    """Mixin for nnUNetTrainer subclasses.

    `run_length` maps nnU-Net's run-length attributes (num_epochs, num_iterations_per_epoch,
    num_val_iterations_per_epoch, save_every) to values; a variant sets it as a class attribute and the trainer's
    `__init__` calls `apply_run_length()` after nnU-Net's, which sets the defaults. (nnU-Net rebuilds its init
    kwargs from the most derived `__init__`'s signature, so variants must not define `__init__` with other
    parameters; with this they need none at all.)
    """

    run_length: dict[str, int] = {}

    def apply_run_length(self) -> None:
        for name, value in self.run_length.items():
            if not hasattr(self, name):
                raise AttributeError(f"{type(self).__name__}.run_length sets '{name}', which nnUNetTrainer does "
                                     f"not have")
            setattr(self, name, value)

    def unwrapped_network(self) -> nn.Module:
        """The network itself, unwrapped from DDP and torch.compile."""
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod
