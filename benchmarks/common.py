"""What the benchmark scripts share: their data and trainer folders, the command-line options every timing benchmark
has, the nnU-Net work folder and console scripts, the machine a run measured, and the report (a Markdown table on
the terminal, every number in a JSON file).

Importing this module sets OMP_WAIT_POLICY=PASSIVE unless it is set: it must happen before torch loads libgomp,
whose default spin-waiting makes every small op cost ~8 ms with 2 threads on the 2-vCPU development VMs (a 50x
slowdown of the tiny-UNet runs); the scripts import it before torch.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
HEALTHY_SOURCE = HERE.parents[1] / "shared" / "data" / "healthy_t1"  # healthy T1 brains, *_t1.nii.gz
TRAINERS_FOLDER = HERE / "trainers"  # the benchmarks' own trainers, for nnUNet_extTrainer


# ---- command line ----
def timing_arguments(description: str, quick: str, threads: str, device: str) -> argparse.ArgumentParser:
    """A parser with the options of the timing benchmarks (--quick, --output, --workdir, --source, --threads,
    --device); the texts say what --quick, --threads and --device mean for the script."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--output", type=Path, help="write the results to this JSON file")
    p.add_argument("--workdir", type=Path,
                   help="folder for nnUNet_raw/preprocessed/results (kept afterwards; default: a temporary folder)")
    p.add_argument("--source", type=Path, default=HEALTHY_SOURCE,
                   help=f"folder of healthy '*_t1.nii.gz' brains (default: {HEALTHY_SOURCE})")
    p.add_argument("--threads", type=int, default=2, help=threads)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help=device)
    p.add_argument("--unet", nargs="+", metavar="KEY=VALUE", type=unet_setting,
                   help="denoiser size instead of the mode's (unet.* settings of plans/sadm_diffusion.json), e.g. the "
                        "paper's: base_channels=64 max_channels=256 layers_per_block=2 norm_num_groups=32")
    return p


PAPER_UNET = ("base_channels=64", "max_channels=256", "layers_per_block=2", "norm_num_groups=32")


def unet_setting(text: str) -> tuple[str, int]:
    """'KEY=VALUE' of an integer unet.* setting, as (KEY, VALUE)."""
    key, _, value = text.partition("=")
    if not key or not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected KEY=INTEGER (a unet.* setting), found {text!r}")
    return key, int(value)


def select_mode(args: argparse.Namespace, modes: dict[str, dict], options: tuple[str, ...]) -> tuple[str, dict]:
    """('quick' or 'full', a copy of that mode's settings with the given `options` of `args` that are set)."""
    name = "quick" if args.quick else "full"
    mode = dict(modes[name])
    mode.update({key: getattr(args, key) for key in options if getattr(args, key) is not None})
    return name, mode


# ---- nnU-Net work folder and commands ----
def nnunet_env(workdir: Path) -> dict[str, str]:
    """nnU-Net's three path variables for a work folder."""
    return {"nnUNet_raw": str(workdir / "nnUNet_raw"), "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
            "nnUNet_results": str(workdir / "nnUNet_results")}


def prepare_workdir(workdir: Path | None, prefix: str) -> tuple[tempfile.TemporaryDirectory | None, Path]:
    """The folder for nnU-Net's data: `workdir` (created, kept) or a temporary one (removed with the handle)."""
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix=prefix)
        return tmp, Path(tmp.name)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return None, workdir


def console_script(name: str) -> str:
    """The console script of this interpreter's environment (falls back to PATH)."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"Console script '{name}' is neither beside {sys.executable} nor on PATH")
    return found


def synchronize(device) -> None:
    """Waits for the GPU's queued work (timings of CUDA calls); nothing on the CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ---- what was measured where ----
def now() -> str:
    """The local date and time, ISO format, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def format_load(values: list[float] | None) -> str:
    return ", ".join(f"{x:.2f}" for x in values) if values else "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name(device) -> str | None:
    import torch

    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None


def machine_info(device, threads: int | None = None) -> dict:
    """CPUs, GPU, torch and its threads (`threads`: the thread count the script was asked for), the libgomp wait
    policy, Python, platform and the load average now."""
    import torch

    return {"cpu_count": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "device": str(device), "gpu": gpu_name(device),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": load_average()}


def versions() -> dict:
    """Installed versions of the packages whose code the benchmarks time."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("sadm_nnunet", "nnunetv2", "diffusers", "torch", "batchgeneratorsv2"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# ---- report ----
def write_report(results: dict, table: str, output: Path | None) -> None:
    """Prints the Markdown table and writes the JSON results to `output` (if given)."""
    print()
    print(table)
    if output is not None:
        from sadm_nnunet.io_utils import write_json_atomic

        write_json_atomic(json.loads(json.dumps(results, default=str)), output)  # a killed run keeps the last file
        print(f"\nResults written to {output}")
