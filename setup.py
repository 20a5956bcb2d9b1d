"""Installation of sadm_nnunet, an nnU-Net v2 plugin (see README.md)."""
from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).parent
STARTUP_HOOK = "sadm_nnunet_trainers.pth"


class BuildPyWithStartupHook(build_py):
    """Also places the start-up hook that registers our trainers with nnU-Net in site-packages.

    The .pth file runs `sadm_nnunet._startup` when Python starts; that module only appends our trainer folder to
    the environment variable `nnUNet_extTrainer` (no heavy imports), so plain `nnUNetv2_train -tr SADM...` works.
    """

    def run(self) -> None:
        super().run()
        self.copy_file(str(HERE / "sadm_nnunet" / STARTUP_HOOK), str(Path(self.build_lib) / STARTUP_HOOK))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / STARTUP_HOOK)]


class _StrategyWithStartupHook:
    """Wraps setuptools' editable strategy so that the editable wheel carries the start-up hook too."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def __call__(self, wheel, files, mapping) -> None:
        self.inner(wheel, files, mapping)
        wheel.writestr(STARTUP_HOOK, (HERE / "sadm_nnunet" / STARTUP_HOOK).read_bytes())


class EditableWheelWithStartupHook(editable_wheel):
    """`pip install -e .` installs the start-up hook as well (setuptools' editable wheels skip build_py outputs)."""

    def _select_strategy(self, name, tag, build_lib):
        return _StrategyWithStartupHook(super()._select_strategy(name, tag, build_lib))


setup(
    name="sadm_nnunet",
    version="0.1.0",
    description="Reconstruction-based anomaly detection (diffusion) combined with nnU-Net segmentation (SADM)",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "sadm_nnunet",
        "sadm_nnunet.diffusion",
        "sadm_nnunet.training",
        "sadm_nnunet.commands",
        "sadm_nnunet.nnunet_ext",
        "sadm_nnunet.datasets",
        "sadm_nnunet.datasets.converters",
        "sadm_nnunet.segmentation",
        "sadm_nnunet.experiment",
        "sadm_nnunet.plans",
    ],
    # The JSON templates live in the top-level plans/ folder and are installed as sadm_nnunet.plans.
    package_dir={"sadm_nnunet.plans": "plans"},
    package_data={"sadm_nnunet.plans": ["*.json"]},
    install_requires=[
        # >= 2.8.1: first release that imports external trainers from `nnUNet_extTrainer` and passes
        # plans_manager/configuration_manager to build_network_architecture, both of which we rely on.
        "nnunetv2>=2.8.1,<2.9",
        # UNet2DModel/DDPMScheduler/DDIMScheduler API and safetensors save_pretrained as used here.
        "diffusers>=0.30",
        "torch>=2.1",
        "safetensors>=0.4",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3",
        "nibabel>=5",
        "SimpleITK>=2.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-image>=0.21",
        "tqdm>=4.60",
        # sadm_nnunet_evaluate --figures: per-case PNGs and the contact sheet (Agg backend, no display needed).
        "matplotlib>=3.5",
        # sadm_nnunet_demo builds its cohort from the MNI152 template that ships inside the nilearn wheel.
        "nilearn>=0.10",
    ],
    # scikit-learn: independent reference implementation of AUPRC/AUROC that the evaluation tests compare against;
    # pytest-xdist: `make test` runs the test files in two processes (the trainings are single-threaded).
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "scikit-learn>=1.2"]},
    cmdclass={"build_py": BuildPyWithStartupHook, "editable_wheel": EditableWheelWithStartupHook},
    entry_points={
        "console_scripts": [
            "sadm_nnunet_ext_path=sadm_nnunet.commands.ext_path:main",
            "sadm_nnunet_plan_diffusion=sadm_nnunet.commands.plan_diffusion:main",
            "sadm_nnunet_plan=sadm_nnunet.commands.plan_sadm:main",
            "sadm_nnunet_reconstruct=sadm_nnunet.commands.reconstruct:main",
            "sadm_nnunet_evaluate=sadm_nnunet.commands.evaluate:main",
            "sadm_nnunet_score=sadm_nnunet.commands.score:main",
            "sadm_nnunet_convert=sadm_nnunet.commands.convert:main",
            "sadm_nnunet_demo=sadm_nnunet.commands.demo:main",
        ]
    },
)
