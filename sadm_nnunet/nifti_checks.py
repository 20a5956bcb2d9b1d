"""Integrity of image files, read and written: all the voxel data the NIfTI header announces is there, and the
voxels are finite.

SimpleITK fills the missing part of a truncated file with zeros and reads NaN/inf as 0, and its WriteImage does
not raise when the disk is full; so files are checked with nibabel, from the raw data. Every reader of the
project calls `check_image_file` before reading an input image; every NIfTI the project writes goes through
`atomic_image`, which checks the temporary file before it is renamed into place.
"""
from __future__ import annotations

import gzip
import io
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from sadm_nnunet.errors import InputError
from sadm_nnunet.io_utils import IncompleteWrite, atomic_path

NIFTI_ENDINGS = (".nii.gz", ".nii")
CHUNK = 1 << 16  # small reads: a corrupt .gz stream raises and loses the bytes of the read in progress
HEADER_READ = 1 << 16  # NIfTI header and extensions lie in the first bytes


class BadImageFile(InputError):
    """An input image that cannot be used: `problem`, `found` and `expected` say why (the converter records them)."""

    def __init__(self, path: Path | str, problem: str, found, expected) -> None:
        super().__init__(f"{path}: {problem}: found {found}, expected {expected}")
        self.path, self.problem, self.found, self.expected = Path(path), problem, found, expected


def is_nifti(path: Path | str) -> bool:
    return str(path).endswith(NIFTI_ENDINGS)


def _stored_bytes(path: Path) -> int:
    """Bytes of the (decompressed) file that can be read; a .gz file is read until its end or its first error."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    size = 0
    try:
        with gzip.open(path) as f:
            while chunk := f.read(CHUNK):
                size += len(chunk)
    except (EOFError, OSError, zlib.error):  # truncated or corrupt stream: what came before it counts
        pass
    return size


def _open(path: Path):
    return gzip.open(path) if path.name.endswith(".gz") else open(path, "rb")


def read_header(path: Path | str):
    """The NIfTI-1/2 header of `path`, read from the file's first bytes only (so that it is found in a truncated
    file too); `BadImageFile` when there is none."""
    import nibabel as nib

    path = Path(path)
    head = b""
    try:
        with _open(path) as f:
            while len(head) < HEADER_READ and (chunk := f.read(min(512, HEADER_READ - len(head)))):
                head += chunk
    except (EOFError, OSError, zlib.error):  # what was read before the error may still hold the header
        pass
    errors = []
    for kind in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            return kind.from_fileobj(io.BytesIO(head), check=True)
        except Exception as e:  # nibabel raises several kinds for bytes that are not its header
            errors.append(" ".join(str(e).split()) or type(e).__name__)
    raise BadImageFile(path, "unreadable", f"{len(head)} byte(s) that are not a NIfTI header ({errors[0][-200:]})",
                       "a readable NIfTI image")


def data_bytes(path: Path | str) -> tuple[int, int, object]:
    """(bytes present, bytes the header announces: offset + voxel data, the header) of a NIfTI file (for .gz:
    decompressed bytes)."""
    path = Path(path)
    header = read_header(path)
    needed = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    return _stored_bytes(path), needed, header


def check_complete(path: Path | str):
    """Error (`BadImageFile`) unless the file holds all the voxel data its header announces; returns the nibabel
    image."""
    import nibabel as nib

    present, needed, header = data_bytes(path)
    if present < needed:
        raise BadImageFile(path, "truncated", f"{present} bytes",
                           f"{needed} bytes (header: shape {list(header.get_data_shape())}, "
                           f"{header.get_data_dtype()})")
    try:
        return nib.load(path)
    except Exception as e:  # complete but still not loadable
        raise BadImageFile(path, "unreadable", " ".join(str(e).split())[-300:] or type(e).__name__,
                           "a readable NIfTI image") from None


def _refuse_non_finite(path: Path | str, values: np.ndarray) -> None:
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise BadImageFile(path, "non-finite voxels", f"{bad} NaN/inf voxel(s)", "finite values")


def check_image_file(path: Path | str) -> None:
    """The check every reader runs on an input image: a NIfTI file must hold all its voxel data, and its stored
    voxels (scaling applied) must be finite; other formats are left to their reader. Errors: `BadImageFile`."""
    if not is_nifti(path):
        return
    proxy = check_complete(path).dataobj
    if proxy.dtype.kind == "f" or proxy.slope != 1 or proxy.inter != 0:  # stored integers are always finite
        _refuse_non_finite(path, np.asanyarray(proxy))


def load_checked(path: Path | str) -> tuple[object, np.ndarray]:
    """(nibabel image, voxel array as stored, scaling applied) of a complete NIfTI file with finite voxels."""
    image = check_complete(path)
    values = np.asanyarray(image.dataobj)
    if values.dtype.kind == "f":
        _refuse_non_finite(path, values)
    return image, values


def check_image_files(paths) -> None:
    for path in paths:
        check_image_file(path)


def verify_written_image(tmp: Path, target: Path) -> None:
    """Raises `IncompleteWrite` naming `target` when the just-written temporary `tmp` does not hold its whole
    voxel data (the write was cut short, e.g. by a full disk)."""
    if not is_nifti(tmp):
        if tmp.stat().st_size == 0:
            raise IncompleteWrite(f"could not write {target}: 0 bytes written; the disk may be full. Nothing was "
                                  f"written under that name")
        return
    try:
        present, needed, _ = data_bytes(tmp)
    except BadImageFile:
        present, needed = tmp.stat().st_size, None
    if needed is None or present < needed:
        expected = "a complete NIfTI header" if needed is None else f"{needed} bytes (header and voxel data)"
        unit = " (decompressed)" if tmp.name.endswith(".gz") else ""
        raise IncompleteWrite(f"could not write {target}: {present} bytes{unit} written, expected {expected}; the disk "
                              f"may be full. Nothing was written under that name")


@contextmanager
def atomic_image(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_path` for images: yields a temporary path; the file written there is verified
    (`verify_written_image`) before it is renamed to `path`."""
    with atomic_path(path, verify=verify_written_image) as tmp:
        yield tmp


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """Writes `array` with `affine` as a NIfTI file, atomically and verified (`atomic_image`)."""
    import nibabel as nib

    with atomic_image(path) as tmp:
        nib.save(nib.Nifti1Image(array, affine), str(tmp))
