import os

import pytest
import torch
from diffusers import DDPMPipeline

from sadm_nnunet.diffusion.export import load_diffusion_model, save_diffusion_model
from sadm_nnunet.diffusion.model import EMADenoiser
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.diffusion.settings import DiffusionSettings

TINY = {"unet": {"base_channels": 8, "max_channels": 16, "norm_num_groups": 4, "layers_per_block": 1},
        "noise": {"kind": "gaussian"}}


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    settings = DiffusionSettings.from_dict(TINY)
    unet = EMADenoiser.from_settings(settings, (32, 32), 1).ema
    folder = save_diffusion_model(unet, settings, tmp_path / "diffusion_model")
    return unet, settings, folder


def test_roundtrip_gives_identical_reconstructions(saved):
    unet, settings, folder = saved
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pth"))
    loaded, loaded_settings = load_diffusion_model(folder)
    assert loaded_settings == settings
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(Reconstructor(loaded, loaded_settings)(x), Reconstructor(unet, settings)(x))


def test_folder_loads_with_diffusers_alone(saved):
    _, _, folder = saved
    pipe = DDPMPipeline.from_pretrained(folder, use_safetensors=True)
    assert pipe.scheduler.config.prediction_type == "sample"
    assert pipe.scheduler.config.num_train_timesteps == 1000
    image = pipe(batch_size=1, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 1)


def test_truncated_weights_and_missing_files_are_clear_errors(saved):
    _, _, folder = saved
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"diffusion_pytorch_model.safetensors.*truncated"):
        load_diffusion_model(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors is missing"):
        load_diffusion_model(folder)


def test_failed_export_leaves_the_previous_folder_intact(saved, monkeypatch):
    unet, settings, folder = saved
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        save_diffusion_model(unet, settings, folder)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert [p for p in os.listdir(folder.parent) if p.startswith(".")] == []
    load_diffusion_model(folder)
