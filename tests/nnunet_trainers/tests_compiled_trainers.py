"""Test-only trainer: nnU-Net's CUDA default, torch.compile of the whole network, on the CPU.

nnU-Net compiles only on CUDA (`_do_i_compile` returns False on the CPU) and with torch's default backend, inductor,
whose first call of even a tiny network takes minutes on 2 cores. This trainer says yes to compiling and gives
nnU-Net's own `torch.compile(self.network)` (and its compile of the Dice loss) the `aot_eager` backend: dynamo's
graph capture and the OptimizedModule wrapper with its `_orig_mod` keys are the same as on a GPU.

nnU-Net imports this file as a top-level module: absolute imports only.
"""
from __future__ import annotations

import functools

import torch

from sadm_nnunet.training.sadm_trainer import SADMTrainer_2epochs_10its

COMPILE_BACKEND = "aot_eager"


class TestsCompiledSADMTrainer_2epochs_10its(SADMTrainer_2epochs_10its):
    def _do_i_compile(self) -> bool:
        return True

    def initialize(self) -> None:
        compile_with_default_backend = torch.compile
        torch.compile = functools.partial(compile_with_default_backend, backend=COMPILE_BACKEND)
        try:
            super().initialize()
        finally:
            torch.compile = compile_with_default_backend
