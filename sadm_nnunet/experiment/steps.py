"""A resumable sequence of steps: console commands in subprocesses, and Python functions.

A finished step leaves `steps/<key>.json` (what ran, how long it took, and for a Python step its JSON result) in
the work folder; running the sequence again skips it. A step that fails raises `StepFailed` naming the command,
its exit code, the log file and the last lines of its output. Every command's full output goes to `log.txt`; the
terminal shows the step titles, the commands, and the progress lines of nnU-Net's training (epochs, losses).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

from sadm_nnunet.io_utils import write_json_atomic

# nnU-Net's per-epoch lines and our commands' summaries: shown on the terminal (everything goes to the log).
# nnU-Net prefixes its log lines with a timestamp ("2026-01-01 10:00:00.000000: Epoch 3").
_PROGRESS = re.compile(r"^(\d{4}-\d\d-\d\d [\d:.]+: )?(Epoch \d+|iteration \d+/\d+|train_loss|val_loss|"
                       r"Pseudo dice|Validation SSIM|Epoch time|Mean Validation Dice|Validation complete|"
                       r"Diffusion model .*exported|Scoring|Wrote|Predicting|.*[Ee]rror)")


class StepFailed(RuntimeError):
    pass


class Steps:
    """Runs steps in order, once each, with progress on the terminal and the full output in `log.txt`."""

    def __init__(self, workdir: Path, env: dict[str, str], total: int, out=sys.stdout) -> None:
        self.workdir = Path(workdir)
        self.done_folder = self.workdir / "steps"
        self.done_folder.mkdir(parents=True, exist_ok=True)
        self.log_file = self.workdir / "log.txt"
        self.env = env
        self.total = total
        self.count = 0
        self.out = out
        self.started = time.perf_counter()

    def _marker(self, key: str) -> Path:
        return self.done_folder / f"{key}.json"

    def done(self, key: str) -> bool:
        return self._marker(key).is_file()

    def _header(self, title: str, skipped: bool) -> None:
        self.count += 1
        elapsed = time.perf_counter() - self.started
        state = " (done earlier, skipped)" if skipped else ""
        print(f"[{self.count}/{self.total}] {title}{state}   [{elapsed / 60:.1f} min]", file=self.out, flush=True)

    def _finish(self, key: str, record: dict) -> None:
        write_json_atomic(record, self._marker(key))

    def python(self, key: str, title: str, function: Callable[[], dict | None]) -> dict | None:
        """Runs `function` unless the step is done; returns its (JSON-able) result, stored with the marker."""
        if self.done(key):
            self._header(title, skipped=True)
            return json.loads(self._marker(key).read_text()).get("result")
        self._header(title, skipped=False)
        start = time.perf_counter()
        result = function()
        self._finish(key, {"title": title, "seconds": time.perf_counter() - start, "result": result})
        return result

    def command(self, key: str, title: str, argv: list, resume: Callable[[], list] | None = None,
                **extra_env: str) -> None:
        """Runs a console command unless the step is done. `resume()` may return extra arguments for a re-run of
        an interrupted step (e.g. nnU-Net's --c when a checkpoint exists)."""
        if self.done(key):
            self._header(title, skipped=True)
            return
        self._header(title, skipped=False)
        argv = [str(a) for a in argv] + ([str(a) for a in resume()] if resume else [])
        print(f"    $ {shlex.join(argv)}", file=self.out, flush=True)
        start = time.perf_counter()
        tail: deque[str] = deque(maxlen=40)
        env = {**self.env, **extra_env, "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "a") as log:
            log.write(f"\n===== {title}\n$ {shlex.join(argv)}\n")
            log.flush()
            try:
                proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        bufsize=1)
            except FileNotFoundError:
                raise StepFailed(f"command '{argv[0]}' not found on PATH ({env.get('PATH')}); is the project "
                                 f"installed in this environment?") from None
            for line in proc.stdout:
                log.write(line)
                for part in line.rstrip("\n").split("\r"):
                    part = part.strip()
                    if part:
                        tail.append(part)
                        shown = _PROGRESS.match(part)
                        if shown:
                            print(f"      {part[len(shown.group(1) or ''):]}", file=self.out, flush=True)
            code = proc.wait()
        seconds = time.perf_counter() - start
        if code != 0:
            last = "\n".join(f"      {t}" for t in tail)
            raise StepFailed(f"step '{title}' failed: `{shlex.join(argv)}` exited with code {code} after "
                             f"{seconds:.0f} s. Full output: {self.log_file}. Last lines:\n{last}")
        print(f"      ({seconds:.0f} s)", file=self.out, flush=True)
        self._finish(key, {"title": title, "argv": argv, "seconds": seconds})


def clean_env(raw: Path, preprocessed: Path, results: Path, bin_folder: Path | None = None) -> dict[str, str]:
    """The environment of the steps' commands: the caller's, with the three nnU-Net folders set, this Python's
    bin folder first on PATH, and on small machines (<= 4 CPUs) nnU-Net's worker processes off unless set."""
    env = dict(os.environ)
    bin_folder = Path(bin_folder or Path(sys.executable).parent)
    env["PATH"] = f"{bin_folder}{os.pathsep}{env.get('PATH', '')}"
    env.update({"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed), "nnUNet_results": str(results)})
    if (os.cpu_count() or 1) <= 4:
        env.setdefault("nnUNet_n_proc_DA", "0")
        env.setdefault("nnUNet_def_n_proc", "1")
    # libgomp's spin-waiting slows small tensor ops many times over on machines with few shared cores
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env
