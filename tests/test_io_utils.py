"""Atomic writes: all or nothing, and files with the modes a plain open()/mkdir() would give them."""
from __future__ import annotations

import os
import stat

import pytest

from sadm_nnunet.io_utils import atomic_folder, atomic_path, write_json_atomic


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
