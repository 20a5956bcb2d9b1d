"""cDDPM: the stage-I denoiser conditioned on an image encoder's embedding (unit tests on tiny real models, then one
short real `nnUNetv2_train -tr SADMDiffusionTrainer_cDDPM_*` run, its export, reconstruction and stage-II use)."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from sadm_nnunet.diffusion.encoder import ImageEncoder
from sadm_nnunet.diffusion.model import ConditionedUNet
from sadm_nnunet.diffusion.export import load_diffusion_model, save_diffusion_model
from sadm_nnunet.diffusion.model import EMADenoiser, make_scheduler
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.diffusion.settings import DiffusionSettings, encoder_config, unet_config

from conftest import HEALTHY_ID, NNUNet

TINY = {"unet": {"base_channels": 8, "max_channels": 16, "norm_num_groups": 4, "layers_per_block": 1}}
CONDITIONED = {**TINY, "conditioning": {"encoder": "conv", "base_channels": 8, "levels": 2}}
CDDPM_TRAINER = "SADMDiffusionTrainer_cDDPM_2epochs_10its"


def tiny(conditioned: bool = True, seed: int = 0) -> tuple[EMADenoiser, DiffusionSettings]:
    settings = DiffusionSettings.from_dict(CONDITIONED if conditioned else TINY)
    torch.manual_seed(seed)
    return EMADenoiser.from_settings(settings, (32, 32), 1), settings


def slices(n: int = 4, h: int = 30, w: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, h, w, generator=torch.Generator().manual_seed(seed))


# ---- the unconditioned default is unchanged ----
def test_default_settings_and_denoiser_are_the_unconditioned_ones():
    settings = DiffusionSettings.from_dict(TINY)
    assert settings.conditioning.encoder is None
    config = unet_config(settings, (32, 32), 1)
    assert "class_embed_type" not in config and encoder_config(settings, config) is None
    denoiser, _ = tiny(conditioned=False)
    torch.manual_seed(0)
    reference = UNet2DModel(**config)  # what the EMA wrapper built before cDDPM existed: same random draws, same keys
    assert type(denoiser.unet) is UNet2DModel and type(denoiser.ema) is UNet2DModel
    assert set(denoiser.state_dict()) == {f"{p}.{k}" for p in ("unet", "ema") for k in reference.state_dict()} | {
        "ema_updates"}
    assert all(torch.equal(v, denoiser.unet.state_dict()[k]) for k, v in reference.state_dict().items())
    x, t = slices(2, 32, 32), torch.tensor([10, 700])
    with torch.no_grad():
        expected = reference(x, t).sample
        torch.testing.assert_close(denoiser(x, t), expected, rtol=0, atol=0)
        torch.testing.assert_close(denoiser(x, t, slices(2, 32, 32, seed=5)), expected, rtol=0, atol=0)


def test_an_unconditioned_export_from_before_cddpm_still_loads(tmp_path):
    denoiser, settings = tiny(conditioned=False)
    folder = save_diffusion_model(denoiser.ema, settings, tmp_path / "diffusion_model")
    old = json.loads((folder / "sadm_diffusion.json").read_text())
    del old["conditioning"]  # the settings file as written before the block existed
    (folder / "sadm_diffusion.json").write_text(json.dumps(old))
    model, loaded = load_diffusion_model(folder)
    assert type(model) is UNet2DModel and loaded == settings and not (folder / "image_encoder").exists()


# ---- the conditioned denoiser ----
def test_embedding_width_is_the_unets_time_embedding_width():
    denoiser, settings = tiny()
    unet, encoder = denoiser.unet.unet, denoiser.unet.image_encoder
    assert unet.config.class_embed_type == "identity"
    assert encoder.config.embedding_dim == unet.time_embedding.linear_2.out_features == 4 * 8
    assert encoder(slices(3, 32, 32)).shape == (3, 32)
    assert encoder(slices(3, 30, 28)).shape == (3, 32)  # global pooling: any slice size


def test_embedding_of_the_clean_slice_changes_the_prediction():
    denoiser, _ = tiny()
    noisy, t = slices(2, 32, 32), torch.tensor([250, 750])
    clean_a, clean_b = slices(2, 32, 32, seed=1), slices(2, 32, 32, seed=2)
    with torch.no_grad():
        a, again, b = denoiser(noisy, t, clean_a), denoiser(noisy, t, clean_a), denoiser(noisy, t, clean_b)
    assert torch.equal(a, again)
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    with pytest.raises(ValueError, match="needs the clean"):
        denoiser(noisy, t)


def test_a_training_step_trains_the_image_encoder():
    """SADMDiffusionTrainer's own denoising step and configure_optimizers on a conditioned denoiser."""
    from sadm_nnunet.training.diffusion_trainer import SADMDiffusionTrainer

    denoiser, settings = tiny()
    trainer = SimpleNamespace(settings=settings, device=torch.device("cpu"), network=denoiser,
                              noise_scheduler=make_scheduler(settings), loss=torch.nn.L1Loss(), grad_scaler=None,
                              initial_lr=1e-3, weight_decay=0.0, num_epochs=1, denoiser=lambda: denoiser)
    trainer.optimizer, _ = SADMDiffusionTrainer.configure_optimizers(trainer)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    encoder = denoiser.unet.image_encoder
    assert {id(p) for p in encoder.parameters()} <= optimised
    assert not optimised & {id(p) for p in denoiser.ema.parameters()}
    before = copy.deepcopy(encoder.state_dict())
    denoiser.train()  # as nnU-Net does at the start of every epoch
    torch.manual_seed(3)
    SADMDiffusionTrainer.denoising_step(trainer, {"data": slices(4, 32, 32)})
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert not torch.equal(p.detach(), before[name]), name
    ema_encoder = denoiser.ema.image_encoder
    assert int(denoiser.ema_updates) == 1 and not ema_encoder.training
    assert not torch.equal(ema_encoder.layers[0].weight, before["layers.0.weight"])  # the EMA follows


OPTIONS = {
    "single_step": {},
    "iterative_ddim": {"method": "iterative", "sampler": "ddim", "num_steps": 3, "noise_levels": (500,)},
    "iterative_ddpm": {"method": "iterative", "sampler": "ddpm", "num_steps": 3, "noise_levels": (500,)},
    "patchwise": {"patch_grid": 2},
}


@pytest.mark.parametrize("method", list(OPTIONS))
def test_reconstruction_conditions_on_the_whole_input_slice(method):
    denoiser, settings = tiny()
    model = denoiser.ema
    options = replace(settings.reconstruction, batch_size=3, **OPTIONS[method])
    x = slices(5)
    seen = []
    handle = model.image_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        a = Reconstructor(model, settings, options)(x)
    finally:
        handle.remove()
    # the encoder embeds each whole (padded, model-space) input slice once, in batch_size chunks
    assert torch.equal(torch.cat(seen), F.pad(x / settings.intensity_scale, (0, 0, 0, 2)))  # 30x28 -> 32x28
    assert len(seen) == 2
    assert torch.equal(a, Reconstructor(model, settings, options)(x))  # seeded
    if method == "single_step":
        torch.testing.assert_close(a, Reconstructor(model, settings, replace(options, batch_size=64))(x),
                                   atol=1e-5, rtol=1e-5)
    other = copy.deepcopy(model)
    other.image_encoder.layers[-1].bias.data += 1.0
    assert not torch.allclose(a, Reconstructor(other, settings, options)(x), atol=1e-4)


def test_export_round_trip_is_bit_exact_and_loads_without_our_trainer(tmp_path):
    denoiser, settings = tiny()
    model = denoiser.ema
    folder = save_diffusion_model(model, settings, tmp_path / "diffusion_model")
    assert (folder / "image_encoder" / "config.json").is_file()
    assert (folder / "image_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pth"))
    loaded, loaded_settings = load_diffusion_model(folder)
    assert isinstance(loaded, ConditionedUNet) and loaded_settings == settings
    assert loaded_settings.conditioning.encoder == "conv"
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    x = slices(3)
    assert torch.equal(Reconstructor(loaded, loaded_settings)(x), Reconstructor(model, settings)(x))
    # the parts load with diffusers' own loader (the encoder class is ours, its files are diffusers')
    unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, low_cpu_mem_usage=False)
    encoder = ImageEncoder.from_pretrained(folder / "image_encoder", use_safetensors=True, low_cpu_mem_usage=False)
    with torch.no_grad():
        y, t = slices(2, 32, 32), torch.tensor([100, 900])
        torch.testing.assert_close(unet(y, t, class_labels=encoder(y)).sample, model(y, t, y), rtol=0, atol=0)


def test_incomplete_or_inconsistent_cddpm_exports_are_clear_errors(tmp_path):
    denoiser, settings = tiny()
    folder = save_diffusion_model(denoiser.ema, settings, tmp_path / "diffusion_model")
    config_file = folder / "image_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "embedding_dim": 64}))
    with pytest.raises(ValueError, match=r"image_encoder/config.json describes.*'embedding_dim': 64.*config give"):
        load_diffusion_model(folder)
    shutil.rmtree(folder / "image_encoder")
    with pytest.raises(FileNotFoundError, match="image_encoder/config.json is missing"):
        load_diffusion_model(folder)


def test_trainers_set_or_refuse_the_planned_conditioning(nnunet, healthy_dataset):
    from sadm_nnunet.nnunet_plans import resolve_diffusion_settings

    plans = json.loads((nnunet.preprocessed / healthy_dataset / "nnUNetPlans.json").read_text())
    cddpm = resolve_diffusion_settings(copy.deepcopy(plans), "2d", "conv", "SADMDiffusionTrainer_cDDPM")
    assert cddpm.conditioning.encoder == "conv"
    plain = copy.deepcopy(plans)
    assert resolve_diffusion_settings(plain, "2d", None).conditioning.encoder is None
    assert plain["configurations"]["2d"]["sadm_diffusion"]["conditioning"]["encoder"] is None  # the record
    conv = copy.deepcopy(plans)
    conv["configurations"]["2d"]["sadm_diffusion"] = {"conditioning": {"encoder": "conv"}}
    with pytest.raises(ValueError, match=r"conditioning.encoder to 'conv'.*SADMDiffusionTrainer trains an "
                                         r"unconditioned DDPM.*-tr SADMDiffusionTrainer_cDDPM"):
        resolve_diffusion_settings(copy.deepcopy(conv), "2d", None, "SADMDiffusionTrainer")
    conv["configurations"]["2d"]["sadm_diffusion"] = {"conditioning": {"encoder": "resnet"}}
    with pytest.raises(ValueError, match=r"conditioning.encoder' is 'resnet'; expected null"):
        resolve_diffusion_settings(conv, "2d", "conv")


# ---- a real short training run, its export, reconstruction and stage II ----
@pytest.fixture(scope="module")
def cddpm_run(nnunet, healthy_dataset, tmp_path_factory) -> NNUNet:
    """SADMDiffusionTrainer_cDDPM_2epochs_10its on the healthy dataset, in nnU-Net folders of its own (a copy of the
    preprocessed data), so `sadm_nnunet_plan --ddpm` elsewhere still finds a single stage-I model."""
    own = NNUNet(tmp_path_factory.mktemp("cddpm"))
    shutil.copytree(nnunet.preprocessed / healthy_dataset, own.preprocessed / healthy_dataset)
    own.run("nnUNetv2_train", HEALTHY_ID, "2d", "all", "-tr", CDDPM_TRAINER, "-device", "cpu")
    return own


def test_cddpm_trainer_trains_and_exports_the_encoder(cddpm_run, healthy_dataset):
    fold = cddpm_run.fold_folder(healthy_dataset, CDDPM_TRAINER)
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert plans["configurations"]["2d"]["sadm_diffusion"]["conditioning"]["encoder"] == "conv"
    weights = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert int(weights["ema_updates"]) == 20
    model, settings = load_diffusion_model(fold / "diffusion_model")
    assert isinstance(model, ConditionedUNet)
    exported = model.state_dict()
    assert {k for k in weights if k.startswith("ema.")} == {f"ema.{k}" for k in exported}
    assert all(torch.equal(v, weights[f"ema.{k}"]) for k, v in exported.items())  # the EMA, encoder included
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["per_case"]) == 8 and np.isfinite(summary["mean"]["ssim"])


def test_cddpm_model_reconstructs_with_the_command(cddpm_run, nnunet, healthy_dataset, tmp_path):
    import nibabel as nib

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(nnunet.raw / healthy_dataset / "imagesTr" / "healthy_000_0000.nii.gz", images)
    out = tmp_path / "out"
    proc = cddpm_run.run("sadm_nnunet_reconstruct", "-i", images, "-o", out, "-d", HEALTHY_ID, "-tr", CDDPM_TRAINER)
    assert "conditioned on each slice (cDDPM)" in proc.stdout
    original = np.asarray(nib.load(images / "healthy_000_0000.nii.gz").dataobj)
    recon = np.asarray(nib.load(out / "healthy_000_reconstruction_0000.nii.gz").dataobj)
    assert recon.shape == original.shape and np.isfinite(recon).all() and np.all(recon[original == 0] == 0)


def test_stage2_network_uses_the_cddpm_model(cddpm_run, healthy_dataset, monkeypatch, tmp_path):
    """sadm_nnunet_plan records the cDDPM model; the static builder rebuilds UNet + encoder, the stage-I weights
    load into it and a strict reload (what nnUNetv2_predict does) reproduces the output."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sadm_nnunet.segmentation.settings import SADMSettings
    from sadm_nnunet.segmentation.stage1 import load_stage1_denoiser
    from sadm_nnunet.training.sadm_trainer import SADMTrainer

    cddpm_run.run("sadm_nnunet_plan", HEALTHY_ID, "--ddpm", HEALTHY_ID, "--name", "2d_csadm")
    plans = json.loads((cddpm_run.preprocessed / healthy_dataset / "nnUNetPlans.json").read_text())
    block = plans["configurations"]["2d_csadm"]["sadm"]
    assert block["stage1"]["trainer"] == CDDPM_TRAINER and block["denoiser"]["class_embed_type"] == "identity"
    assert block["diffusion"]["conditioning"]["encoder"] == "conv"
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("2d_csadm")

    def build():
        return SADMTrainer.build_network_architecture(plans_manager, configuration, 1, 2, False)

    monkeypatch.setenv("nnUNet_results", str(cddpm_run.results))
    network = build()
    assert isinstance(network.denoiser, ConditionedUNet)
    stage1 = load_stage1_denoiser(SADMSettings.from_configuration(configuration.configuration, "2d_csadm"))
    network.denoiser.load_state_dict(stage1.state_dict())  # as SADMTrainer.on_train_start does
    network.train()
    assert not network.denoiser.training and not network.denoiser.image_encoder.training
    assert not any(p.requires_grad for p in network.denoiser.parameters())
    network.eval()
    x = torch.randn(2, 1, *configuration.patch_size, generator=torch.Generator().manual_seed(0))
    settings = SADMSettings.from_configuration(configuration.configuration)
    with torch.no_grad():
        torch.testing.assert_close(network.reconstruct(x), Reconstructor(stage1, settings.diffusion)(x))
        output = network(x)
    torch.save(network.state_dict(), tmp_path / "weights.pth")
    torch.manual_seed(1)
    reloaded = build()
    reloaded.load_state_dict(torch.load(tmp_path / "weights.pth"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), output)
    assert any(k.startswith("denoiser.image_encoder.") for k in network.state_dict())


def test_a_stage1_state_dict_written_before_the_rename_loads_strictly():
    """tests/data holds an EMA denoiser's state dict (cDDPM: UNet + image encoder, one EMA update) saved when the
    class was called `Denoiser` and `ConditionedUNet` lived in diffusion/encoder.py; its keys and outputs are
    unchanged under `EMADenoiser`."""
    saved = torch.load(Path(__file__).parent / "data" / "cddpm_denoiser_state_2026-12-02.pt", weights_only=True)
    settings = DiffusionSettings.from_dict(saved["settings"])
    denoiser = EMADenoiser.from_settings(settings, tuple(saved["patch_size"]), 1)
    denoiser.load_state_dict(saved["state_dict"], strict=True)
    assert int(denoiser.ema_updates) == 1 and isinstance(denoiser.ema, ConditionedUNet)
    with torch.no_grad():
        out = denoiser.ema(saved["input"], saved["timesteps"], saved["input"])
    torch.testing.assert_close(out, saved["ema_output"], rtol=0, atol=1e-5)  # float summation order only
