"""Stage-I study on the demo's own healthy dataset: which settings let the demo's short stage I learn anatomy.

    python benchmarks/demo_stage1_study.py --workdir DEMO_FOLDER --name NAME [--set KEY=VALUE ...]
        [--epochs 2] [--iterations 250] [--val-iterations 50] [--record benchmarks/demo_stage1_study.json]

DEMO_FOLDER is a `sadm_nnunet_demo --output` folder in which the demo ran at least its planning step (cohort and
`nnUNetv2_plan_and_preprocess`); the healthy dataset's preprocessed data are used as they are. One run trains
`SADMDiffusionTrainer` in this process (fold `all`, CPU, nnU-Net's data loading and the trainer's own validation)
with the demo mode's denoiser overrides plus `--set` (same syntax as `sadm_nnunet_plan_diffusion --set`), in a
results folder of its own under DEMO_FOLDER/stage1_study/NAME. It records, per epoch:

- `val_ssim`: the trainer's validation SSIM (EMA weights, random validation patches; nnU-Net's "pseudo dice");
- on a fixed set of whole slices (every slice with brain of the first 4 cases, the same every epoch): SSIM of the
  EMA and of the raw (trained) weights with the configured noise levels, and of the EMA weights at each level alone;
- seconds per training iteration (data loading included; wall-clock and this process's CPU time, which a shared
  machine inflates much less) and seconds of validation.

`--calibrate` trains nothing: it reports the same SSIMs for reference "reconstructions" of the fixed slices (a flat
image, the input blurred or offset, the noised input x_t / sqrt(alpha_bar_t) at each validation noise level), which
says what a number means.

Cost is compared within the run: before training, a few iterations of the demo mode's *current* denoiser settings
(the baseline) are timed on the same batches, so `cost_ratio` = s/iteration of this run / s/iteration of the
baseline does not depend on the load of a shared machine (`cpu_cost_ratio` likewise in CPU time). Results are
appended to `--record` (JSON list).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

FIXED_CASES = 4
BASELINE_ITERATIONS = 8


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="a sadm_nnunet_demo output folder (planned)")
    p.add_argument("--mode", default="default", help="the demo mode whose dataset and overrides are used")
    p.add_argument("--name", required=True, help="name of this run (its results folder and record entry)")
    p.add_argument("--calibrate", action="store_true",
                   help="no training: SSIM of reference reconstructions (flat, blurred, offset, noised) instead")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides on top of the demo's")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=250, help="training iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=50, help="validation batches per epoch")
    p.add_argument("--record", type=Path, default=None, help="JSON list to append this run's results to")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = args.workdir.resolve()
    study = workdir / "stage1_study" / args.name
    os.environ.update({"nnUNet_raw": str(workdir / "nnUNet_raw"),
                       "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
                       "nnUNet_results": str(study), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"})
    import numpy as np
    import torch

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sadm_nnunet.commands.demo import MODES
    from sadm_nnunet.commands.plan_diffusion import parse_override
    from sadm_nnunet.diffusion.noise import sample_noise
    from sadm_nnunet.anomaly_maps import masked_mean, ssim_map
    from sadm_nnunet.diffusion.reconstruction import Reconstructor
    from sadm_nnunet.diffusion.settings import PLANS_KEY, load_template, merge_settings
    from sadm_nnunet.training.diffusion_trainer import SADMDiffusionTrainer, resolve_diffusion_settings

    mode = MODES[args.mode]
    dataset = f"Dataset{mode['cohort']['healthy_id']:03d}_{mode['cohort']['name']}Healthy"
    folder = workdir / "nnUNet_preprocessed" / dataset
    if not (folder / "nnUNetPlans.json").is_file():
        raise SystemExit(f"{folder}/nnUNetPlans.json is missing: run sadm_nnunet_demo --output {workdir} through "
                         f"its planning step first")
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())

    def settings_block(overrides) -> dict:
        block = load_template()
        for override in overrides:
            block = merge_settings(block, parse_override(override))
        return block

    plans["configurations"]["2d"][PLANS_KEY] = settings_block(list(mode["denoiser_overrides"]) + args.set)
    baseline_plans = json.loads(json.dumps(plans))
    baseline_plans["configurations"]["2d"][PLANS_KEY] = settings_block(mode["denoiser_overrides"])
    baseline_settings = resolve_diffusion_settings(baseline_plans, "2d")

    def fixed_slices(trainer) -> torch.Tensor:
        _, val_keys = trainer.do_split()
        data = trainer.dataset_class(trainer.preprocessed_dataset_folder, sorted(val_keys)[:FIXED_CASES])
        stacks = []
        for key in data.identifiers:
            volume = torch.from_numpy(np.asarray(data.load_case(key)[0][:], dtype=np.float32))
            slices = volume.permute(1, 0, 2, 3)
            stacks.append(slices[(slices != 0).flatten(1).any(1)])
        h, w = max(s.shape[2] for s in stacks), max(s.shape[3] for s in stacks)
        # the cases differ in size: pad with 0 (background) to the largest
        return torch.cat([torch.nn.functional.pad(s, (0, w - s.shape[3], 0, h - s.shape[2])) for s in stacks])

    def ssim_of(trainer, model, slices, levels) -> dict:
        """Mean per-slice SSIM inside the brain between the slices and their reconstruction on z / intensity_scale
        with the background at 0 (data range 2; the trainer's own yardstick with `background` 'brain_mean', the
        same for every run), shifted by +1 (so that intensities are non-negative, as in the paper's [0, 1] images;
        SSIM's luminance term assumes that) and, as "ssim_trainer", in the run's own model space (differs with
        `background` 'floor', where windows at the brain's edge see the background at -1)."""
        recon = Reconstructor(model, trainer.settings, replace(trainer.settings.reconstruction,
                                                               noise_levels=tuple(levels)))(slices)
        scale = trainer.settings.intensity_scale
        a, b = slices / scale, recon / scale
        mask = (slices != 0).any(1, keepdim=True)
        result = {name: float(masked_mean(ssim_map(a + shift, b + shift, data_range=2.0), mask).mean())
                  for name, shift in (("ssim", 0.0), ("ssim_shifted", 1.0))}
        a, b = trainer.settings.to_model_space(slices), trainer.settings.to_model_space(recon)
        result["ssim_trainer"] = float(masked_mean(ssim_map(a, b, data_range=2.0), mask).mean())
        return result

    def calibration(trainer) -> dict:
        from scipy import ndimage

        slices = fixed_slices(trainer)
        settings = trainer.settings
        a = settings.to_model_space(slices)

        def blurred(sigma):
            return torch.from_numpy(ndimage.gaussian_filter(a.numpy(), (0, 0, sigma, sigma)))

        references = {"flat (0: the brain's mean)": torch.zeros_like(a), "blurred, sigma 0.5 px": blurred(0.5),
                      "blurred, sigma 1 px": blurred(1.0), "blurred, sigma 2 px": blurred(2.0),
                      "offset +0.05 (0.15 z)": a + 0.05, "contrast x 0.8": a * 0.8}
        generator = torch.Generator().manual_seed(0)
        noise = sample_noise(tuple(a.shape), settings.noise, generator, "cpu")
        for t in settings.reconstruction.noise_levels:
            root = float(trainer.noise_scheduler.alphas_cumprod[t]) ** 0.5
            references[f"x_t / sqrt(alpha_bar), t={t}"] = trainer.noise_scheduler.add_noise(
                a, noise, torch.full((a.shape[0],), t)) / root
        mask = (slices != 0).any(1, keepdim=True)
        return {name: {key: float(masked_mean(ssim_map(a + shift, b + shift, data_range=2.0), mask).mean())
                       for key, shift in (("ssim", 0.0), ("ssim_shifted", 1.0))}
                for name, b in references.items()}

    class StudyTrainer(SADMDiffusionTrainer):
        run_length = {"num_epochs": args.epochs, "num_iterations_per_epoch": args.iterations,
                      "num_val_iterations_per_epoch": args.val_iterations, "save_every": 1000}

        def on_train_start(self):
            super().on_train_start()
            self.study = {"epochs": [], "fixed_slices": None}
            self.fixed = fixed_slices(self)
            self.study["fixed_slices"] = int(self.fixed.shape[0])
            self.study["baseline_s_per_it"], self.study["baseline_cpu_s_per_it"] = self.time_baseline()

        def time_baseline(self) -> float:
            """s/iteration of the demo's current denoiser settings on this trainer's batches (data loading
            included), the same steps as train_step."""
            torch.manual_seed(0)
            manager = PlansManager(baseline_plans)
            net = self.build_network_architecture(manager, manager.get_configuration("2d"), self.num_input_channels,
                                                  self.num_input_channels).to(self.device)
            optimizer = torch.optim.Adam(net.trainable_parameters(), lr=baseline_settings.training.learning_rate)
            times, cpu_times = [], []
            for _ in range(BASELINE_ITERATIONS + 1):
                start, cpu_start = time.perf_counter(), time.process_time()
                x0 = baseline_settings.to_model_space(next(self.dataloader_train)["data"].to(self.device))
                t = torch.randint(0, baseline_settings.num_train_timesteps, (x0.shape[0],))
                noisy = self.noise_scheduler.add_noise(
                    x0, sample_noise(tuple(x0.shape), baseline_settings.noise, None, self.device), t)
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.l1_loss(net(noisy, t), x0)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.trainable_parameters(), baseline_settings.training.grad_clip)
                optimizer.step()
                net.update_ema()
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
            return float(np.median(times[1:])), float(np.median(cpu_times[1:]))

        def on_train_epoch_start(self):
            super().on_train_epoch_start()
            self._t_train, self._cpu_train = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, train_outputs):
            self._s_train = time.perf_counter() - self._t_train
            self._cpu_s_train = time.process_time() - self._cpu_train
            super().on_train_epoch_end(train_outputs)

        def on_validation_epoch_start(self):
            super().on_validation_epoch_start()
            self._t_val = time.perf_counter()

        def on_validation_epoch_end(self, val_outputs):
            super().on_validation_epoch_end(val_outputs)
            s_val = time.perf_counter() - self._t_val
            levels = self.settings.reconstruction.noise_levels
            d = self.denoiser()
            d.unet.eval()
            entry = {"epoch": self.current_epoch,
                     "iterations_done": (self.current_epoch + 1) * self.num_iterations_per_epoch,
                     "train_loss": float(self.logger.get_value("train_losses", step=-1)),
                     "val_ssim": float(self.logger.get_value("val_ssim", step=-1)),
                     "fixed_ema": ssim_of(self, d.ema, self.fixed, levels),
                     "fixed_raw": ssim_of(self, d.unet, self.fixed, levels),
                     "fixed_ema_per_level": {str(t): ssim_of(self, d.ema, self.fixed, [t])["ssim"]
                                             for t in levels},
                     "s_per_it": self._s_train / self.num_iterations_per_epoch,
                     "cpu_s_per_it": self._cpu_s_train / self.num_iterations_per_epoch, "s_validation": s_val}
            self.study["epochs"].append(entry)
            self.print_to_log_file(f"study: {json.dumps(entry)}")

    StudyTrainer.__name__ = StudyTrainer.__qualname__ = "SADMDiffusionTrainer_study"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    plans["continue_training"] = False  # what nnunetv2.run.run_training passes to every trainer
    trainer = StudyTrainer(plans, "2d", "all", dataset_json, torch.device("cpu"))
    if args.calibrate:
        trainer.initialize()
        result = {"name": args.name, "date": datetime.date.today().isoformat(),
                  "command": shlex.join(["python", "benchmarks/demo_stage1_study.py", *(argv or sys.argv[1:])]),
                  "mode": args.mode, "set": args.set, "calibration": calibration(trainer)}
        print(json.dumps(result, indent=1))
        record(args.record, result)
        return
    started = time.perf_counter()
    trainer.run_training()
    s = trainer.study
    s_per_it = float(np.mean([e["s_per_it"] for e in s["epochs"]]))
    cpu_s_per_it = float(np.mean([e["cpu_s_per_it"] for e in s["epochs"]]))
    result = {"name": args.name, "date": datetime.date.today().isoformat(),
              "command": shlex.join(["python", "benchmarks/demo_stage1_study.py", *(argv or sys.argv[1:])]),
              "mode": args.mode, "set": args.set, "epochs": args.epochs, "iterations_per_epoch": args.iterations,
              "val_iterations_per_epoch": args.val_iterations,
              "patch_size": list(trainer.configuration_manager.patch_size),
              "batch_size": int(trainer.configuration_manager.batch_size),
              "settings": trainer.settings.to_dict(), "fixed_slices": s["fixed_slices"],
              "per_epoch": s["epochs"], "s_per_it": s_per_it, "baseline_s_per_it": s["baseline_s_per_it"],
              "cost_ratio": s_per_it / s["baseline_s_per_it"], "cpu_s_per_it": cpu_s_per_it,
              "baseline_cpu_s_per_it": s["baseline_cpu_s_per_it"],
              "cpu_cost_ratio": cpu_s_per_it / s["baseline_cpu_s_per_it"], "wall_s": time.perf_counter() - started,
              "threads": torch.get_num_threads()}
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))
    record(args.record, result)


def record(path: Path | None, result: dict) -> None:
    """Appends `result` to the JSON list in `path` (replacing an entry of the same name)."""
    if path is None:
        return
    records = json.loads(path.read_text()) if path.is_file() else []
    records = [r for r in records if r["name"] != result["name"]] + [result]
    from sadm_nnunet.io_utils import write_json_atomic

    write_json_atomic(records, path)


if __name__ == "__main__":
    main()
