"""Atomic writes: all or nothing, verified before the rename, with the modes a plain open()/mkdir() would give
them; temporaries of killed runs cleaned up; JSON read with the file named."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sadm_nnunet.errors import InputError
from sadm_nnunet.io_utils import (HOST_TAG, IncompleteWrite, atomic_folder, atomic_path, read_json,
                                  remove_stale_temporaries, write_json_atomic)
from sadm_nnunet.nifti_checks import atomic_image


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic({"a": 1}, tmp_path / "x.json")
        with atomic_path(tmp_path / "y.nii.gz") as tmp:
            tmp.write_bytes(b"data")
        with atomic_folder(tmp_path / "model") as folder:
            (folder / "weights").write_bytes(b"w")
    finally:
        os.umask(old)
    assert mode(tmp_path / "x.json") == 0o644 and mode(tmp_path / "y.nii.gz") == 0o644
    assert mode(tmp_path / "model") == 0o755


def test_failed_writes_leave_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic({"a": 1}, target)
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "y.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# ---- written files are verified before they get their name (a full disk gives short files silently) ----
def write_nifti(path, shape=(6, 7, 8)) -> bytes:
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), np.eye(4)), str(path))
    return Path(path).read_bytes()


@pytest.mark.parametrize("name, keep", [("a.nii", 0.5), ("a.nii.gz", 0.5), ("a.nii.gz", 0.0)])
def test_a_short_written_image_is_refused_and_never_gets_its_name(tmp_path, name, keep):
    complete = write_nifti(tmp_path / f"full_{name}")
    target = tmp_path / "out" / name
    with atomic_image(target) as tmp:
        tmp.write_bytes(complete)
    assert target.read_bytes() == complete  # a complete file passes
    with pytest.raises(IncompleteWrite) as e:
        with atomic_image(target) as tmp:
            tmp.write_bytes(complete[:int(len(complete) * keep)])
    message = str(e.value)
    expected = "a complete NIfTI header" if keep == 0 else f"{352 + 4 * 6 * 7 * 8} bytes (header and voxel data)"
    assert message.startswith(f"could not write {target}: ") and f"expected {expected}" in message
    if name == "a.nii":
        assert f"{len(complete) // 2} bytes written" in message
    assert target.read_bytes() == complete  # the earlier file stays, no temporary is left
    assert sorted(p.name for p in target.parent.iterdir()) == [name]


def full_disk_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


FULL_DISK_SCRIPT = r"""
import json, os, sys
import numpy as np
import SimpleITK as sitk
from sadm_nnunet.errors import InputError
from sadm_nnunet.io_utils import write_json_atomic
from sadm_nnunet.nnunet_cases import write_volumes
out = sys.argv[1]
properties = {"sitk_stuff": {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                             "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}}
result = {}
noise = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)  # incompressible: 256 kB > 64 kB
try:
    write_volumes(out, "case", {"score": noise}, ".nii.gz", properties)
    result["nifti"] = "no error"
except InputError as e:
    result["nifti"] = str(e)
try:
    write_json_atomic({"values": noise.ravel().tolist()}, os.path.join(out, "big.json"))
    result["json"] = "no error"
except InputError as e:
    result["json"] = str(e)
result["left"] = sorted(os.listdir(out))
print("RESULT" + json.dumps(result))
"""


@pytest.mark.skipif(not full_disk_available(), reason="needs unshare -rm and a tmpfs mount (user namespaces)")
def test_full_disk_fails_loudly_and_leaves_no_file(tmp_path):
    """A 64 kB tmpfs in a private mount namespace: SimpleITK writes a short file without raising; the write is
    refused with the file named, and nothing is left under the final name (nor any temporary)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    script = tmp_path / "write.py"
    script.write_text(FULL_DISK_SCRIPT)
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mount} && "
                           f"{sys.executable} {script} {mount}"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["nifti"].startswith(f"could not write {mount}/case_score.nii.gz: ")
    assert "expected 256352 bytes (header and voxel data)" in result["nifti"] or \
        "expected a complete NIfTI header" in result["nifti"]
    assert result["json"].startswith(f"could not write {mount}/big.json: No space left on device")
    assert result["left"] == []


# ---- temporaries of killed runs ----
KILLED_SCRIPT = r"""
import os, sys, time
from pathlib import Path
from sadm_nnunet.io_utils import atomic_folder, atomic_path
out = Path(sys.argv[1])
with atomic_folder(out / "Dataset805_Mine") as folder, atomic_path(out / "CASE_score.nii.gz") as tmp:
    (folder / "imagesTr").mkdir()
    tmp.write_bytes(b"half")
    print("ready", flush=True)
    time.sleep(600)
"""


def test_temporaries_of_a_killed_run_are_removed_others_kept(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    assert remove_stale_temporaries(out) == 0  # the writer still runs: its temporaries are in use
    child.kill()  # SIGKILL: no clean-up of its own
    child.wait()
    leftovers = sorted(p.name for p in out.iterdir())
    assert len(leftovers) == 2 and all(name.startswith(".sadm-tmp-") for name in leftovers)
    (out / ".CASE_score.nii.gz.abcd.nii.gz").write_bytes(b"someone else's")  # not our naming
    (out / "notes.txt").write_text("a user's file")
    with atomic_path(out / "mine.json") as mine:  # ours, and this process is alive
        mine.write_text("{}")
        assert remove_stale_temporaries(out) == 2
        assert mine.exists()
    assert sorted(p.name for p in out.iterdir()) == [".CASE_score.nii.gz.abcd.nii.gz", "mine.json", "notes.txt"]


def test_an_old_temporary_of_another_machine_is_stale(tmp_path):
    other = tmp_path / ".sadm-tmp-12345-0000abcd-x.nii.gz.q1w2e3.nii.gz"
    assert other.name[len(".sadm-tmp-12345-"):][:8] != HOST_TAG or pytest.skip("host tag collision")
    other.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 0  # recent: its writer may still run on the other machine
    os.utime(other, (time.time() - 2 * 86400,) * 2)
    assert remove_stale_temporaries(tmp_path) == 1 and not other.exists()


def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "plans.json"
    bad.write_text('{"configurations": {')
    with pytest.raises(InputError, match=r"plans file .*plans\.json is not valid JSON \(20 characters; "):
        read_json(bad, "plans file")
    with pytest.raises(InputError, match=r"JSON file .*missing\.json does not exist"):
        read_json(tmp_path / "missing.json")
    bad.write_text('{"a": 1}')
    assert read_json(bad) == {"a": 1}
