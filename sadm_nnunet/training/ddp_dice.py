"""nnU-Net's batch Dice under DDP when the ranks hold different batch sizes.

nnU-Net splits a configuration's batch size over the DDP ranks and gives the remainder to the first ranks (a batch
of 9 on 2 GPUs: 5 + 4). Its `MemoryEfficientSoftDiceLoss` with `batch_dice` all-gathers the per-sample sums of
shape (batch, classes) from every rank (nnunetv2 2.8.1, training/loss/dice.py); all_gather needs equal shapes, so
with unequal batches the collective mismatches: gloo aborts the first training step ("Received data size doesn't
match expected size. 10 vs 8" for 5 vs 4 samples of one class), NCCL's behaviour is undefined. We pad each rank's
batch with fully masked samples (loss mask 0) to the largest per-rank batch before calling nnU-Net's own forward:
masked samples add nothing to the gathered sums, so the Dice over the global batch and its gradients are unchanged.
The largest per-rank batch follows from the plans' batch size and the world size, once, so the loss adds no
collective and no host synchronisation per call.
"""
from __future__ import annotations

import torch
from torch._dynamo import OptimizedModule

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss


class RankBatchSoftDiceLoss(MemoryEfficientSoftDiceLoss):
    """MemoryEfficientSoftDiceLoss whose DDP batch Dice works with any per-rank batch size up to
    `largest_rank_batch` (the first rank's share of nnU-Net's split, set by `with_rank_batch_dice`)."""

    largest_rank_batch = 0

    def forward(self, x, y, loss_mask=None):
        missing = self.largest_rank_batch - x.shape[0]
        if not (self.ddp and self.batch_dice) or missing <= 0:
            return super().forward(x, y, loss_mask)
        if loss_mask is None:
            loss_mask = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t.new_zeros((missing, *t.shape[1:]))])

        return super().forward(padded(x), padded(y), padded(loss_mask))


def largest_rank_batch(global_batch_size: int, world_size: int) -> int:
    """The largest per-rank batch of nnU-Net's DDP split (the first ranks get the remainder)."""
    return -(-global_batch_size // world_size)


def with_rank_batch_dice(loss, largest: int):
    """nnU-Net's training loss (as `nnUNetTrainer._build_loss` builds it) with its MemoryEfficientSoftDiceLoss made
    a RankBatchSoftDiceLoss that pads every rank's batch to `largest` samples, in place; other Dice classes are left
    alone."""
    holder = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
    dice = getattr(holder, "dc", None)
    dice = dice._orig_mod if isinstance(dice, OptimizedModule) else dice
    if type(dice) is MemoryEfficientSoftDiceLoss:
        dice.__class__ = RankBatchSoftDiceLoss
        dice.largest_rank_batch = largest
    return loss
