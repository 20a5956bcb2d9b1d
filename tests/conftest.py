"""Shared fixtures: a tiny healthy nnU-Net dataset built from ../shared/data/healthy_t1 and a trained stage-I model.

Everything goes through the real nnU-Net commands in subprocesses whose environment holds only the nnU-Net path
variables (plus thread limits), as a user's shell would.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# nnUNetv2_train/-predict on -device cpu call torch.set_num_threads(cpu_count()), whatever OMP_NUM_THREADS says, so
# with two test workers on two cores the commands oversubscribe them; passive OpenMP waiting keeps that cheap (no
# spinning threads). (OMP_THREAD_LIMIT=1 is no cure: under it a backward pass with torch's 2 threads never ends.)
TEST_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
os.environ.update(TEST_THREADS)

REPO = Path(__file__).resolve().parents[1]
HEALTHY_T1 = REPO.parent / "shared" / "data" / "healthy_t1"
BIN = Path(sys.executable).parent
TEST_TRAINERS = REPO / "tests" / "nnunet_trainers"  # test-only trainers, for nnUNet_extTrainer
HEALTHY_ID = 501
TINY_UNET = ["unet.base_channels=8", "unet.max_channels=16", "unet.norm_num_groups=4", "unet.layers_per_block=1",
             "training.learning_rate=0.001"]
TRAINER = "SADMDiffusionTrainer_3epochs_100its"


class NNUNet:
    """The three nnU-Net folders and a runner for console commands in a clean environment."""

    def __init__(self, root: Path) -> None:
        self.raw, self.preprocessed, self.results = root / "raw", root / "preprocessed", root / "results"
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict:
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
               "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
               "nnUNet_results": str(self.results), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
               **TEST_THREADS, "nnUNet_extTrainer": str(TEST_TRAINERS)}  # our package appends its own folder at start-up
        env.update(extra)
        return env

    def run(self, *args: str, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in args], env=self.env(**extra_env), capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return proc

    def plan(self, dataset_id: int) -> None:
        # nnU-Net's planner needs nnUNet_n_proc_DA >= 1 (it sets torch threads from it); -npfp 1: its fingerprint
        # step otherwise starts 8 processes
        self.run("nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "2d", "-np", "1", "-npfp", "1",
                 nnUNet_n_proc_DA="1")

    def fold_folder(self, dataset: str, trainer: str, configuration: str = "2d", fold: str = "all") -> Path:
        return self.results / dataset / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


# Fixtures that plan, train or predict with nnU-Net (or run the demo): every test that uses one, directly or
# through another fixture, is marked `slow`; tests that start a training, a prediction or the demo themselves carry
# the marker in their module.
SLOW_FIXTURES = frozenset({"healthy_dataset", "lesion_dataset", "trained_stage1", "sadm_planned", "trained_sadm",
                           "predictions", "cddpm_run", "demo"})


# The test files on the session's nnU-Net folders (the `nnunet` fixture: stage I, the tumour dataset, the SADM model)
# run as one unit of `make test`'s two xdist workers, so the session fixtures are built once and two workers never
# write to the same nnU-Net folders at once; every other file is a unit of its own (its module fixtures built once).
SHARED_NNUNET_FILES = frozenset({"test_cddpm.py", "test_compiled_checkpoint.py", "test_ddp.py", "test_regions.py",
                                 "test_resenc.py", "test_sadm_network.py", "test_score_command.py",
                                 "test_stage1_nnunet.py", "test_stage2_3d.py", "test_stage2_nnunet.py"})


@pytest.hookimpl(tryfirst=True)  # before the `-m` deselection: checks every collected test
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if "nnunet" in fixtures and item.path.name not in SHARED_NNUNET_FILES:
            raise pytest.UsageError(f"{item.nodeid} uses the session's nnU-Net folders; add {item.path.name} to "
                                    f"SHARED_NNUNET_FILES in tests/conftest.py")


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, except that SHARED_NNUNET_FILES form one unit. (pytest-xdist's own `loadgroup` marks do not
    group under pytest 9: xdist 3.8 puts the group into a node id that pytest 9 no longer reads back.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedNNUNetFiles(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "shared nnU-Net folders" if Path(file).name in SHARED_NNUNET_FILES else file

    return SharedNNUNetFiles(config, log)


@pytest.fixture(scope="session")
def nnunet(tmp_path_factory) -> NNUNet:
    return NNUNet(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture(scope="session")
def healthy_dataset(nnunet: NNUNet) -> str:
    """Dataset501_Healthy: 8 healthy subjects at 6 mm (about 30x36x30), planned and preprocessed for '2d'."""
    from sadm_nnunet.datasets.healthy_cohort import build_healthy_dataset

    name = f"Dataset{HEALTHY_ID}_Healthy"
    build_healthy_dataset(HEALTHY_T1, nnunet.raw / name, num_cases=8, seed=0, zoom=1 / 3, spacing=6.0)
    nnunet.plan(HEALTHY_ID)
    nnunet.run("sadm_nnunet_plan_diffusion", HEALTHY_ID, "--set", *TINY_UNET)
    return name


def train_interrupted_then_resumed(nnunet: NNUNet, cmd: list[str], fold: Path) -> dict:
    """Runs an nnU-Net training command, kills it right after its first checkpoints (latest and best), then
    resumes it with --c. Returns both logs and the epoch stored in the checkpoint the second run resumed from."""
    first = subprocess.Popen(cmd, env=nnunet.env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.time() + 1200
    while not ((fold / "checkpoint_latest.pth").is_file() and (fold / "checkpoint_best.pth").is_file()):
        assert first.poll() is None, f"training ended before its first checkpoint:\n{first.stdout.read()}"
        assert time.time() < deadline, "no checkpoint_latest.pth and checkpoint_best.pth after 1200 s"
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first_log = first.communicate()[0]
    interrupted_epochs = torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"]
    second = nnunet.run(*cmd, "--c")
    return {"fold": fold, "first_log": first_log, "second_log": second.stdout,
            "resumed_from_epoch": interrupted_epochs}


@pytest.fixture(scope="session")
def trained_stage1(nnunet: NNUNet, healthy_dataset: str) -> dict:
    """Trains TRAINER, kills it after the first checkpoint, resumes with --c; returns the logs of both runs."""
    fold = nnunet.fold_folder(healthy_dataset, TRAINER)
    cmd = ["nnUNetv2_train", str(HEALTHY_ID), "2d", "all", "-tr", TRAINER, "-device", "cpu"]
    return train_interrupted_then_resumed(nnunet, cmd, fold)


# ---- stage II: a labelled tumour dataset, an SADM configuration and a trained SADM model ----
LESION_ID = 503
SADM_TRAINER = "SADMTrainer_2epochs_100its"
PLAIN_TRAINER = "TestsPlainTrainer_2epochs_10its"  # tests/nnunet_trainers


@pytest.fixture(scope="session")
def lesion_dataset(nnunet: NNUNet) -> str:
    """Dataset503_Tumours: 10 training subjects with a tumour-like lesion, 3 held-out test subjects (imagesTs)."""
    from sadm_nnunet.datasets.lesions import build_lesion_dataset

    name = f"Dataset{LESION_ID}_Tumours"
    build_lesion_dataset(HEALTHY_T1, nnunet.raw / name, num_cases=10, seed=3, kind="tumour", zoom=1 / 3,
                         spacing=6.0)
    build_lesion_dataset(HEALTHY_T1, nnunet.raw / name, num_cases=3, seed=3, kind="tumour", zoom=1 / 3,
                         spacing=6.0, first_index=10, split="test")
    nnunet.plan(LESION_ID)
    return name


@pytest.fixture(scope="session")
def sadm_planned(nnunet: NNUNet, trained_stage1: dict, lesion_dataset: str):
    return nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID)


@pytest.fixture(scope="session")
def trained_sadm(nnunet: NNUNet, sadm_planned, lesion_dataset: str) -> dict:
    fold = nnunet.fold_folder(lesion_dataset, SADM_TRAINER, "2d_sadm", "0")
    cmd = ["nnUNetv2_train", str(LESION_ID), "2d_sadm", "0", "-tr", SADM_TRAINER, "-device", "cpu"]
    return train_interrupted_then_resumed(nnunet, cmd, fold)


@pytest.fixture(scope="session")
def predictions(nnunet: NNUNet, trained_sadm: dict, lesion_dataset: str, tmp_path_factory):
    out = tmp_path_factory.mktemp("sadm_predictions")
    nnunet.run("nnUNetv2_predict", "-i", nnunet.raw / lesion_dataset / "imagesTs", "-o", out, "-d", LESION_ID,
               "-c", "2d_sadm", "-tr", SADM_TRAINER, "-f", "0", "--save_probabilities", "-device", "cpu",
               "-npp", "1", "-nps", "1")
    return out


def printed_commands(stderr: str) -> list[list[str]]:
    """The command lines an error message offers (indented lines that start with a console command)."""
    return [line.split() for line in stderr.splitlines()
            if line.startswith("  ") and line.split()[0].startswith(("nnUNetv2_", "sadm_nnunet_"))]
