"""A checkpoint written by a compiled training loads in the unchanged `nnUNetv2_predict` (the `_orig_mod` key trap).

On CUDA nnU-Net wraps the network in torch.compile's OptimizedModule, whose state_dict keys start with `_orig_mod.`;
a checkpoint holding such keys would not load strictly into the network that `nnUNetv2_predict` builds from the
plans. `TestsCompiledSADMTrainer_2epochs_10its` (tests/nnunet_trainers) takes nnU-Net's compile path on the CPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import LESION_ID

pytestmark = pytest.mark.slow  # trains (compiled) and predicts with nnU-Net

COMPILED_TRAINER = "TestsCompiledSADMTrainer_2epochs_10its"


def test_compiled_training_checkpoint_predicts_with_nnunet(nnunet, sadm_planned, lesion_dataset, tmp_path):
    nnunet.run("nnUNetv2_train", LESION_ID, "2d_sadm", "0", "-tr", COMPILED_TRAINER, "-device", "cpu")
    fold = nnunet.fold_folder(lesion_dataset, COMPILED_TRAINER, "2d_sadm", "0")
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Using torch.compile..." in log  # nnU-Net's own compile path ran
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert weights and not [k for k in weights if k.startswith(("_orig_mod.", "module."))]
    # nnU-Net's final validation ran with the compiled network
    assert json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"] >= 0
    out = tmp_path / "predictions"
    nnunet.run("nnUNetv2_predict", "-i", nnunet.raw / lesion_dataset / "imagesTs", "-o", out, "-d", LESION_ID,
               "-c", "2d_sadm", "-tr", COMPILED_TRAINER, "-f", "0", "--save_probabilities", "-device", "cpu",
               "-npp", "1", "-nps", "1")
    cases = sorted(p.name for p in out.glob("*.nii.gz"))
    inputs = sorted((nnunet.raw / lesion_dataset / "imagesTs").glob("*_0000.nii.gz"))
    assert len(cases) == len(inputs) == 3
    for npz in out.glob("*.npz"):
        probabilities = np.load(npz)["probabilities"]
        assert np.isfinite(probabilities).all() and np.allclose(probabilities.sum(0), 1, atol=1e-4)
