"""nnU-Net's batch Dice under DDP when the ranks hold different batch sizes.

nnU-Net splits a configuration's batch size over the DDP ranks and gives the remainder to the first ranks (a batch
of 9 on 2 GPUs: 5 + 4). Its `MemoryEfficientSoftDiceLoss` with `batch_dice` all-gathers the per-sample sums of
shape (batch, classes) from every rank (nnunetv2 2.8.1, training/loss/dice.py); all_gather needs equal shapes, so
with unequal batches the collective mismatches: gloo aborts the first training step ("Received data size doesn't
match expected size. 10 vs 8" for 5 vs 4 samples of one class), NCCL's behaviour is undefined. Summing over the
local batch before the all-gather gives every rank a (1, classes) tensor and the same Dice over the global batch,
with the same gradients.
"""
from __future__ import annotations

import torch
from torch._dynamo import OptimizedModule

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.ddp_allgather import AllGatherGrad


class RankBatchSoftDiceLoss(MemoryEfficientSoftDiceLoss):
    """MemoryEfficientSoftDiceLoss whose DDP batch Dice all-gathers per-rank sums (any per-rank batch size)."""

    def forward(self, x, y, loss_mask=None):
        if not (self.ddp and self.batch_dice):
            return super().forward(x, y, loss_mask)
        # nnU-Net's forward up to the gather, unchanged
        if self.apply_nonlin is not None:
            x = self.apply_nonlin(x)
        axes = tuple(range(2, x.ndim))
        with torch.no_grad():
            if x.ndim != y.ndim:
                y = y.view((y.shape[0], 1, *y.shape[1:]))
            if x.shape == y.shape:
                y_onehot = y.to(torch.float32)
            else:
                y_onehot = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
                y_onehot.scatter_(1, y.long(), 1)
            if not self.do_bg:
                y_onehot = y_onehot[:, 1:]
            sum_gt = (y_onehot if loss_mask is None else y_onehot * loss_mask).sum(axes, dtype=torch.float32)
        if not self.do_bg:
            x = x[:, 1:]
        masked = x if loss_mask is None else x * loss_mask
        intersect = (masked * y_onehot).sum(axes, dtype=torch.float32)
        sum_pred = masked.sum(axes, dtype=torch.float32)
        # the change: (batch, classes) -> (1, classes) on every rank before the all-gather
        intersect, sum_pred, sum_gt = (AllGatherGrad.apply(t.sum(0, keepdim=True, dtype=torch.float32)).sum((0, 1))
                                       for t in (intersect, sum_pred, sum_gt))
        dc = (2 * intersect + self.smooth) / (sum_gt + sum_pred + float(self.smooth)).clamp_min(1e-8)
        return -dc.mean()


def with_rank_batch_dice(loss):
    """nnU-Net's training loss (as `nnUNetTrainer._build_loss` builds it) with its MemoryEfficientSoftDiceLoss made
    a RankBatchSoftDiceLoss, in place; other Dice classes are left alone."""
    holder = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
    dice = getattr(holder, "dc", None)
    dice = dice._orig_mod if isinstance(dice, OptimizedModule) else dice
    if type(dice) is MemoryEfficientSoftDiceLoss:
        dice.__class__ = RankBatchSoftDiceLoss
    return loss
