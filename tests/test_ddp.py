"""Our trainers' DDP code in a 2-process gloo group on the CPU, on the tiny healthy dataset: the per-rank batch
split, DDP (and DDP + torch.compile) unwrapping, identical weights and EMA on both ranks after training steps, the
validation metrics gathered over ranks, the final validation and checkpoints written by rank 0 alone. Plus the
GradScaler path of stage I with a CPU scaler.

nnU-Net's DDP assumes CUDA (NCCL, `DDP(network, device_ids=[rank])`, device set to cuda:RANK in __init__). The
workers therefore put the trainer back on the CPU after __init__ and give nnU-Net's `initialize` a DDP constructor
without device_ids (what DDP requires for CPU modules); everything else is the real trainers' code."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from test_sadm_network import sadm_plans  # noqa: F401  (fixture: the healthy plans with a '2d_sadm' block)

pytestmark = pytest.mark.slow
WORLD = 2

def cpu_ddp(module, device_ids=None):
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)


def on_cpu(trainer):
    trainer.device = torch.device("cpu")
    trainer.grad_scaler = None  # nnU-Net made a CUDA scaler (disabled without CUDA); none on the CPU
    trainer.initialize()
    return trainer


def fresh(plans: dict) -> dict:
    """A copy of the plans as nnUNetv2_train hands them to a trainer (it adds 'continue_training')."""
    return {**json.loads(json.dumps(plans)), "continue_training": False}


def weights_digest(module) -> list[float]:
    return [float(p.detach().double().sum()) for p in module.parameters()]


def worker(rank: int, init_file: str, env: dict, plans: dict, sadm_plans: dict, dataset_json: dict, out: str):
    os.environ.update(env)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module
    from torch.nn.parallel import DistributedDataParallel

    from sadm_nnunet.diffusion.model import EMADenoiser
    from sadm_nnunet.segmentation.network import SADMNetwork
    from sadm_nnunet.training.diffusion_trainer import SADMDiffusionTrainer
    from sadm_nnunet.training.sadm_trainer import SADMTrainer

    nnunet_trainer_module.DDP = cpu_ddp
    report = {}
    torch.manual_seed(rank)  # different augmentation and noise per rank, as on separate GPUs

    # ---- stage I ----
    trainer = on_cpu(SADMDiffusionTrainer(fresh(plans), "2d", "all", dataset_json, torch.device("cpu")))
    initial_ema = weights_digest(trainer.denoiser().ema)
    dl_train, dl_val = trainer.get_dataloaders()
    batch = next(dl_train)
    report["stage1_batch"] = [trainer.batch_size, int(batch["data"].shape[0]), trainer.oversample_foreground_percent]
    report["stage1_wrapped"] = [isinstance(trainer.network, DistributedDataParallel),
                                isinstance(trainer.denoiser(), EMADenoiser)]
    trainer.on_train_epoch_start()
    losses = [float(trainer.train_step(next(dl_train))["loss"]) for _ in range(2)]
    report["stage1_loss"] = losses
    report["stage1_unet"] = weights_digest(trainer.denoiser().unet)
    report["stage1_ema"] = weights_digest(trainer.denoiser().ema)
    report["stage1_ema_moved"] = report["stage1_ema"] != initial_ema
    report["stage1_ema_updates"] = int(trainer.denoiser().ema_updates)
    trainer.network.eval()
    outputs = [trainer.validation_step(next(dl_val))]
    trainer.on_validation_epoch_end(outputs)
    report["stage1_val_local"] = [float(v) for v in outputs[0]["ssim"]]
    report["stage1_val_logged"] = trainer.logger.get_value("val_ssim", step=-1)
    trainer.save_checkpoint(os.path.join(out, "stage1.pth"))
    trainer.perform_actual_validation()
    report["stage1_summary"] = os.path.join(trainer.output_folder, "validation", "summary.json")
    # DDP around a compiled network, as nnU-Net wraps them on CUDA: still unwrapped to the network itself
    inner = trainer.denoiser()
    trainer.network = cpu_ddp(torch.compile(inner, backend="aot_eager"))
    report["stage1_unwrapped_compiled"] = trainer.denoiser() is inner
    trainer.save_checkpoint(os.path.join(out, "stage1_compiled.pth"))

    # ---- stage II ----
    trainer = on_cpu(SADMTrainer(fresh(sadm_plans), "2d_sadm", 0, dataset_json, torch.device("cpu")))
    report["stage2_batch"] = [trainer.batch_size, trainer.oversample_foreground_percent]
    report["stage2_wrapped"] = isinstance(trainer.sadm_network(), SADMNetwork)
    report["stage2_dice"] = type(trainer.loss.loss.dc).__name__
    report["stage2_dice_pads_to"] = trainer.loss.loss.dc.largest_rank_batch
    trainer.set_deep_supervision_enabled(True)
    dl_train, _ = trainer.get_dataloaders()
    trainer.on_train_epoch_start()
    denoiser_before = weights_digest(trainer.sadm_network().denoiser)
    report["stage2_loss"] = float(trainer.train_step(next(dl_train))["loss"])
    report["stage2_segmentation"] = weights_digest(trainer.sadm_network().segmentation)
    report["stage2_denoiser_unchanged"] = weights_digest(trainer.sadm_network().denoiser) == denoiser_before
    trainer.save_checkpoint(os.path.join(out, "stage2.pth"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    torch.distributed.destroy_process_group()


def dice_worker(rank: int, init_file: str, out: str):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    from sadm_nnunet.training.ddp_dice import RankBatchSoftDiceLoss, largest_rank_batch

    x, y, mask = dice_batch()
    mine = slice(0, 5) if rank == 0 else slice(5, 9)  # nnU-Net's split of a batch of 9: 5 + 4
    x = x[mine].clone().requires_grad_(True)
    dice = RankBatchSoftDiceLoss(softmax_helper_dim1, batch_dice=True, do_bg=False, smooth=1e-5, ddp=True)
    dice.largest_rank_batch = largest_rank_batch(9, WORLD)  # 5, as SADMTrainer._build_loss sets it
    loss = dice(x, y[mine]) + dice(x, y[mine], loss_mask=mask[mine])
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": x.grad}, os.path.join(out, f"dice{rank}.pt"))
    torch.distributed.destroy_process_group()


def dice_batch():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(9, 3, 8, 8, generator=g), torch.randint(0, 3, (9, 1, 8, 8), generator=g),
            (torch.rand(9, 1, 8, 8, generator=g) > 0.2).float())


def test_batch_dice_over_ranks_with_unequal_batches_matches_one_process(tmp_path):
    """nnU-Net's own MemoryEfficientSoftDiceLoss all-gathers (batch, classes) sums: with 5 + 4 samples gloo aborts
    ("Received data size doesn't match expected size. 10 vs 8"). RankBatchSoftDiceLoss gives the batch Dice of all
    9 samples, as one process computes it, and the gradients DDP then averages."""
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    mp.start_processes(dice_worker, (str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    x, y, mask = dice_batch()
    x.requires_grad_(True)
    dice = MemoryEfficientSoftDiceLoss(softmax_helper_dim1, batch_dice=True, do_bg=False, smooth=1e-5, ddp=False)
    loss = dice(x, y) + dice(x, y, loss_mask=mask)
    loss.backward()
    loss = loss.detach()
    ranks = [torch.load(tmp_path / f"dice{r}.pt") for r in range(WORLD)]
    for r in ranks:
        assert float(r["loss"]) == pytest.approx(float(loss), rel=1e-6)
    # AllGatherGrad sums the gradients of all ranks' (identical) losses; DDP's all-reduce then divides by WORLD
    assert torch.allclose(torch.cat([r["grad"] for r in ranks]) / WORLD, x.grad, rtol=1e-5, atol=1e-8)


def test_rank_batch_dice_replaces_only_nnunets_memory_efficient_dice():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss, SoftDiceLoss

    from sadm_nnunet.training.ddp_dice import RankBatchSoftDiceLoss, with_rank_batch_dice

    kwargs = {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}
    loss = DC_and_CE_loss(kwargs, {}, dice_class=MemoryEfficientSoftDiceLoss)
    loss = with_rank_batch_dice(DeepSupervisionWrapper(loss, [1.0, 0.5]), 5)
    assert type(loss.loss.dc) is RankBatchSoftDiceLoss and loss.loss.dc.largest_rank_batch == 5
    x, y, _ = dice_batch()
    plain = DC_and_CE_loss(kwargs, {}, dice_class=MemoryEfficientSoftDiceLoss)
    assert float(loss.loss(x, y)) == pytest.approx(float(plain(x, y)))  # without DDP: nnU-Net's forward
    other = with_rank_batch_dice(DC_and_CE_loss(kwargs, {}, dice_class=SoftDiceLoss), 5)
    assert type(other.dc) is SoftDiceLoss


@pytest.fixture(scope="module")
def ddp_run(nnunet, healthy_dataset, sadm_plans, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ddp")
    plans = json.loads((nnunet.preprocessed / healthy_dataset / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((nnunet.preprocessed / healthy_dataset / "dataset.json").read_text())
    env = {k: v for k, v in nnunet.env().items() if k.startswith("nnUNet") or k.endswith("NUM_THREADS")}
    env["nnUNet_results"] = str(out / "results")
    mp.start_processes(worker, (str(out / "init"), env, plans, sadm_plans, dataset_json, str(out)), nprocs=WORLD,
                       start_method="spawn")
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return {"out": out, "reports": reports, "plans": plans, "sadm_plans": sadm_plans, "dataset_json": dataset_json}


def test_each_rank_takes_its_share_of_the_batch(ddp_run):
    configured = ddp_run["plans"]["configurations"]["2d"]["batch_size"]
    r0, r1 = (r["stage1_batch"] for r in ddp_run["reports"])
    assert r0[0] + r1[0] == configured and r0[0] - r1[0] in (0, 1)  # nnU-Net's split, the remainder on rank 0
    assert r0[1] == r0[0] and r1[1] == r1[0]  # the data loader delivers that many
    assert r0[2] == r1[2] == 0.0  # stage I never oversamples foreground
    s0, s1 = (r["stage2_batch"] for r in ddp_run["reports"])
    assert s0[0] + s1[0] == configured and 0 <= s0[1] <= 1 and 0 <= s1[1] <= 1


def test_ranks_hold_identical_weights_and_ema_after_training(ddp_run):
    r0, r1 = ddp_run["reports"]
    assert r0["stage1_wrapped"] == r1["stage1_wrapped"] == [True, True] and r0["stage2_wrapped"]
    assert r0["stage1_loss"] != r1["stage1_loss"]  # different data on each rank ...
    assert r0["stage1_unet"] == pytest.approx(r1["stage1_unet"], rel=1e-6, abs=1e-6)  # ... gradients all-reduced
    assert r0["stage1_ema"] == pytest.approx(r1["stage1_ema"], rel=1e-6, abs=1e-6)
    assert r0["stage1_ema_moved"] and r0["stage1_ema_updates"] == r1["stage1_ema_updates"] == 2
    assert r0["stage2_segmentation"] == pytest.approx(r1["stage2_segmentation"], rel=1e-6, abs=1e-6)
    assert r0["stage2_denoiser_unchanged"] and r1["stage2_denoiser_unchanged"]
    assert r0["stage2_dice"] == r1["stage2_dice"] == "RankBatchSoftDiceLoss"  # the 5 + 4 split needs it
    assert r0["stage2_dice_pads_to"] == r1["stage2_dice_pads_to"] == 5


def test_validation_metrics_are_gathered_over_ranks(ddp_run):
    r0, r1 = ddp_run["reports"]
    everything = r0["stage1_val_local"] + r1["stage1_val_local"]
    assert r0["stage1_val_local"] != r1["stage1_val_local"]
    assert r0["stage1_val_logged"] == pytest.approx(sum(everything) / len(everything), rel=1e-6)
    assert r1["stage1_val_logged"] == pytest.approx(r0["stage1_val_logged"], rel=1e-9)
    summary = json.loads(open(r0["stage1_summary"]).read())  # written by rank 0's final validation
    assert len(summary["per_case"]) == 8 and 0 < summary["mean"]["ssim"] <= 1


def test_rank0_writes_checkpoints_that_load_strictly(ddp_run):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sadm_nnunet.training.diffusion_trainer import SADMDiffusionTrainer
    from sadm_nnunet.training.sadm_trainer import SADMTrainer

    out = ddp_run["out"]
    assert sorted(p.name for p in out.glob("*.pth")) == ["stage1.pth", "stage1_compiled.pth", "stage2.pth"]
    assert not list(out.glob("*tmp*"))  # no stray temporary file from rank 1
    for name, plans, configuration, trainer in (("stage1", ddp_run["plans"], "2d", SADMDiffusionTrainer),
                                                ("stage1_compiled", ddp_run["plans"], "2d", SADMDiffusionTrainer),
                                                ("stage2", ddp_run["sadm_plans"], "2d_sadm", SADMTrainer)):
        weights = torch.load(out / f"{name}.pth", map_location="cpu", weights_only=False)["network_weights"]
        assert not [k for k in weights if k.startswith(("module.", "_orig_mod."))]
        manager = PlansManager(plans)
        net = trainer.build_network_architecture(manager, manager.get_configuration(configuration), 1, 2, False)
        net.load_state_dict(weights, strict=True)


def test_stage1_grad_scaler_path_matches_the_plain_step_on_cpu(nnunet, healthy_dataset, monkeypatch, tmp_path):
    """denoising_step's GradScaler branch (taken on CUDA) with a CPU scaler: same update as without one."""
    for key, value in nnunet.env().items():  # nnunetv2 2.8.1 reads its path variables when a trainer uses them
        if key.startswith("nnUNet"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    from sadm_nnunet.training.diffusion_trainer import SADMDiffusionTrainer

    plans = json.loads((nnunet.preprocessed / healthy_dataset / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((nnunet.preprocessed / healthy_dataset / "dataset.json").read_text())
    batch = {"data": torch.randn(4, 1, *plans["configurations"]["2d"]["patch_size"],
                                 generator=torch.Generator().manual_seed(0))}
    digests = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)):
        torch.manual_seed(0)
        trainer = SADMDiffusionTrainer(fresh(plans), "2d", "all", dataset_json, torch.device("cpu"))
        trainer.initialize()
        trainer.grad_scaler = scaler
        torch.manual_seed(1)
        trainer.denoising_step(batch)
        digests.append(weights_digest(trainer.denoiser().unet))
        if scaler is not None:
            assert scaler.get_scale() == 2.0 ** 12  # finite gradients: no step skipped, scale kept
    assert digests[1] == pytest.approx(digests[0], rel=1e-5, abs=1e-6)
