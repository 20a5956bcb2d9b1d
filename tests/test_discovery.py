"""Our trainers are found by plain nnU-Net commands after installation, with no manual step."""
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import BIN

FIND = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
        "import sys; c = f(sys.argv[1]); print('FOUND', c.__module__, c.__name__)")


def run_python(code: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)


def test_ext_path_command_prints_the_shim_folder():
    out = subprocess.run([str(BIN / "sadm_nnunet_ext_path")], capture_output=True, text=True, check=True)
    folder = Path(out.stdout.strip())
    assert (folder / "sadm_trainers.py").is_file()


def test_trainers_are_found_with_only_the_nnunet_variables(tmp_path):
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "nnUNet_raw": str(tmp_path), "nnUNet_preprocessed": str(tmp_path),
           "nnUNet_results": str(tmp_path)}
    for name in ("SADMDiffusionTrainer", "SADMDiffusionTrainer_5epochs"):
        proc = run_python(FIND, name, env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"FOUND sadm_nnunet.training.diffusion_trainer {name}" in proc.stdout
    # and nnU-Net's own trainers are unaffected
    assert "FOUND nnunetv2" in run_python(FIND, "nnUNetTrainer", env=env).stdout


def test_user_folders_in_nnUNet_extTrainer_keep_working(tmp_path):
    own = tmp_path / "my_trainers"
    own.mkdir()
    (own / "my_trainer.py").write_text(textwrap.dedent("""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        class MyLabTrainer(nnUNetTrainer):
            pass
    """))
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "nnUNet_results": str(tmp_path), "nnUNet_extTrainer": str(own)}
    mine = run_python(FIND, "MyLabTrainer", env=env)
    ours = run_python(FIND, "SADMDiffusionTrainer", env=env)
    assert "FOUND my_trainer MyLabTrainer" in mine.stdout, mine.stderr
    assert "FOUND sadm_nnunet.training.diffusion_trainer SADMDiffusionTrainer" in ours.stdout, ours.stderr
    listed = run_python("import os; print(os.environ['nnUNet_extTrainer'])", env=env).stdout.strip().split(":")
    assert listed[0] == str(own) and listed[1].endswith("nnunet_ext") and len(listed) == 2
