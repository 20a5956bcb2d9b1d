"""sadm_nnunet_convert on miniature copies of the IXI, BraTS 2021, ATLAS v2.0 and WMH 2017 release layouts
(the releases' file names and folders, tiny skull-stripped 'brains' with lesions), checked by nnU-Net itself."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import NNUNet
from sadm_nnunet.commands.convert import main
from sadm_nnunet.datasets.converters.case import CaseSkipped, read_image
from sadm_nnunet.datasets.converters.skull_strip import CANNOT_TELL, NOT_STRIPPED, STRIPPED, skull_strip_verdict

SHAPE = (16, 20, 12)
SPACING = (1.2, 1.0, 1.5)
IDS = {"ixi": 610, "brats21": 611, "atlas2": 612, "wmh": 613, "brats21_kept": 614}


# ---- miniature releases ----
def brain(seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A textured ellipsoid 'brain' (zero outside) and its mask."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    mask = (grid ** 2).sum(0) < 0.8
    image = (100 + 20 * np.random.default_rng(seed).standard_normal(SHAPE)) * scale * mask
    return image.astype(np.float32), mask


def tumour(mask: np.ndarray, centre=(8, 10, 6)) -> np.ndarray:
    """BraTS-style labels: necrosis 1 in the core, enhancing 4 around it, edema 2 outside (inside the brain)."""
    d = np.sqrt(((np.indices(SHAPE) - np.array(centre)[:, None, None, None]) ** 2).sum(0))
    seg = np.select([d <= 1, d <= 2.2, d <= 3.5], [1, 4, 2], 0)
    return (seg * mask).astype(np.uint8)


def save(path: Path, array: np.ndarray, origin=(0.0, 0.0, 0.0), spacing=SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0]) + np.pad(np.array([origin]).T, ((0, 1), (3, 0)))),
             path)
    return path


def truncate(path: Path, keep: float = 0.6) -> None:
    """Cuts a file short, as an interrupted download does (SimpleITK reads such a .nii.gz without complaint)."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def make_ixi(root: Path) -> Path:
    """5 subjects; IXI004 has no PD file; IXI003 has its skull (noisy background)."""
    for i in range(5):
        image, mask = brain(i)
        if i == 3:
            image = image + np.random.default_rng(9).uniform(5, 30, SHAPE).astype(np.float32)
        for k, m in enumerate(("T1", "T2", "PD")):
            if not (i == 4 and m == "PD"):
                save(root / f"IXI-{m}" / f"IXI{i:03d}-Guys-{1000 + i}-{m}.nii.gz", image * (k + 1))
    return root


def make_brats(root: Path) -> Path:
    """10 cases; BraTS2021_00009's seg has a different shape."""
    for i in range(10):
        case = root / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData" / f"BraTS2021_{i:05d}"
        image, mask = brain(i)
        for k, m in enumerate(("t1", "t1ce", "t2", "flair")):
            save(case / f"BraTS2021_{i:05d}_{m}.nii.gz", image * (k + 1))
        seg = tumour(mask)
        save(case / f"BraTS2021_{i:05d}_seg.nii.gz", seg[:, :, :-1] if i == 9 else seg)
    return root


def make_atlas(root: Path) -> Path:
    """5 cases nested as in the release; sub-r001s002's T1w is a truncated .nii.gz."""
    for i in range(5):
        anat = root / "ATLAS_2" / "Training" / "R001" / f"sub-r001s{i:03d}" / "ses-1" / "anat"
        prefix = f"sub-r001s{i:03d}_ses-1_space-MNI152NLin2009aSym"
        image, mask = brain(i)
        t1 = save(anat / f"{prefix}_T1w.nii.gz", image)
        save(anat / f"{prefix}_label-L_desc-T1lesion_mask.nii.gz", (tumour(mask) > 0).astype(np.uint8))
        if i == 2:
            truncate(t1)
    return root


def make_wmh(root: Path) -> Path:
    """Utrecht/0-2 and Amsterdam/GE3T/100-101 with orig/ folders (not used); label 2 = other pathology;
    Utrecht/1's label origin is 2 mm off (skipped), Utrecht/2's 1e-4 mm (within tolerance)."""
    for j, case in enumerate(["Utrecht/0", "Utrecht/1", "Utrecht/2", "Amsterdam/GE3T/100", "Amsterdam/GE3T/101"]):
        folder = root / case
        image, mask = brain(j)
        save(folder / "pre" / "FLAIR.nii.gz", image * 3)
        save(folder / "pre" / "T1.nii.gz", image)
        save(folder / "orig" / "FLAIR.nii.gz", np.ones((5, 5, 5), np.float32))
        wmh = (tumour(mask) > 0).astype(np.uint8)
        wmh[2:4, 8:10, 5:7] = 2
        save(folder / "wmh.nii.gz", wmh, origin={1: (2.0, 0, 0), 2: (1e-4, 0, 0)}.get(j, (0, 0, 0)))
    return root


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


# ---- fixtures ----
@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    return {"ixi": make_ixi(root / "IXI"), "brats21": make_brats(root / "BraTS"),
            "atlas2": make_atlas(root / "ATLAS"), "wmh": make_wmh(root / "WMH")}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, sources) -> dict:
    """The four releases (and BraTS with --keep-labels) converted with the console command."""
    nnunet = NNUNet(tmp_path_factory.mktemp("nnunet_convert"))
    extra = {"ixi": ["--modality", "PD", "T1"], "brats21": ["--modality", "FLAIR", "t1"], "atlas2": ["-np", "2"],
             "wmh": []}
    runs = {kind: nnunet.run("sadm_nnunet_convert", kind, sources[kind], IDS[kind], *args)
            for kind, args in extra.items()}
    runs["brats21_kept"] = nnunet.run("sadm_nnunet_convert", "brats21", sources["brats21"], IDS["brats21_kept"],
                                      "--keep-labels", "--name", "BraTS2021kept")
    folders = {kind: next(nnunet.raw.glob(f"Dataset{i}_*")) for kind, i in IDS.items()}
    return {"nnunet": nnunet, "runs": runs, "folders": folders,
            "reports": {k: json.loads((f / "conversion_report.json").read_text()) for k, f in folders.items()}}


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """nnU-Net folders for in-process runs of the command."""
    for name in ("raw", "preprocessed", "results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return tmp_path / "raw"


def cases_in(folder: Path) -> list[str]:
    return sorted(p.name[:-len(".nii.gz")] for p in folder.glob("*.nii.gz")) if folder.is_dir() else []


# ---- nnU-Net accepts the converted datasets ----
@pytest.mark.slow  # nnU-Net's integrity check of five datasets and a fingerprint, in subprocesses: minutes
def test_nnunet_verifies_converted_datasets(converted):
    """nnU-Net's own integrity check on all five datasets (its function: the console commands add a fingerprint
    that costs about 10 s per dataset and channel here), and the console command on the one with an ignore label."""
    nnunet = converted["nnunet"]
    folders = [str(f) for f in converted["folders"].values()]
    check = ("import sys\nfrom nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity"
             "\nfor folder in sys.argv[1:]:\n    verify_dataset_integrity(folder, 1)")
    proc = nnunet.run(sys.executable, "-c", check, *folders)
    assert proc.stdout.count("verify_dataset_integrity Done") == len(folders)
    assert "Error" not in proc.stdout and "Warning" not in proc.stdout
    wmh = converted["folders"]["wmh"]
    proc = nnunet.run("nnUNetv2_extract_fingerprint", "-d", IDS["wmh"], "--verify_dataset_integrity", "-np", "1")
    assert "verify_dataset_integrity Done" in proc.stdout
    fingerprint = json.loads((nnunet.preprocessed / wmh.name / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == json.loads((wmh / "dataset.json").read_text())["numTraining"] == 3
    assert np.allclose(fingerprint["spacings"][0], SPACING[::-1])  # nnU-Net lists spacing as z, y, x


def test_dataset_json_and_progress(converted):
    ixi = json.loads((converted["folders"]["ixi"] / "dataset.json").read_text())
    assert ixi == {"channel_names": {"0": "PD", "1": "T1"}, "labels": {"background": 0, "brain": 1}, "numTraining": 4,
                   "file_ending": ".nii.gz", "name": "IXI", "description": ixi["description"]}
    wmh = json.loads((converted["folders"]["wmh"] / "dataset.json").read_text())
    assert wmh["channel_names"] == {"0": "T1"} and wmh["labels"] == {"background": 0, "lesion": 1, "ignore": 2}
    assert [f.name for f in converted["folders"].values()] == ["Dataset610_IXI", "Dataset611_BraTS2021",
                                                               "Dataset612_ATLAS2", "Dataset613_WMH2017",
                                                               "Dataset614_BraTS2021kept"]


# ---- channels and labels ----
def test_channel_order_follows_modality_option(converted, sources):
    ixi = converted["folders"]["ixi"] / "imagesTr"
    source = sources["ixi"]
    assert np.array_equal(load(ixi / "IXI001-Guys-1001_0000.nii.gz"),
                          load(source / "IXI-PD" / "IXI001-Guys-1001-PD.nii.gz"))
    assert np.array_equal(load(ixi / "IXI001-Guys-1001_0001.nii.gz"),
                          load(source / "IXI-T1" / "IXI001-Guys-1001-T1.nii.gz"))
    brats = converted["folders"]["brats21"]
    case = next(iter(cases_in(brats / "labelsTr")))
    original = sources["brats21"] / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData" / case / f"{case}_flair.nii.gz"
    assert np.array_equal(load(brats / "imagesTr" / f"{case}_0000.nii.gz"), load(original))
    assert not (brats / "imagesTr" / f"{case}_0002.nii.gz").exists()
    image = nib.load(brats / "imagesTr" / f"{case}_0001.nii.gz")
    assert np.allclose(image.header.get_zooms(), SPACING)


def test_label_mappings(converted, sources):
    _, mask = brain(0)
    seg = tumour(mask)
    brats = load(converted["folders"]["brats21"] / "labelsTr" / "BraTS2021_00000.nii.gz")
    assert np.array_equal(brats, (seg > 0).astype(np.uint8))
    kept = load(converted["folders"]["brats21_kept"] / "labelsTr" / "BraTS2021_00000.nii.gz")
    assert np.array_equal(kept, np.where(seg == 4, 3, seg)) and set(np.unique(kept)) == {0, 1, 2, 3}
    assert converted["reports"]["brats21_kept"]["labels"] == {"background": 0, "necrosis": 1, "edema": 2,
                                                              "enhancing": 3}
    wmh_folder = converted["folders"]["wmh"]
    wmh = load(next(wmh_folder.glob("labels*/Utrecht_0.nii.gz")))
    assert np.array_equal(wmh, load(sources["wmh"] / "Utrecht" / "0" / "wmh.nii.gz")) and 2 in wmh
    ixi = load(converted["folders"]["ixi"] / "labelsTr" / "IXI001-Guys-1001.nii.gz")
    assert np.array_equal(ixi, brain(1)[1].astype(np.uint8))  # the brain mask


def test_wmh_case_identifiers_and_origin_tolerance(converted):
    report = converted["reports"]["wmh"]
    done = sorted(c["identifier"] for c in report["cases"])
    assert done == ["Amsterdam_GE3T_100", "Amsterdam_GE3T_101", "Utrecht_0", "Utrecht_2"]
    [skip] = report["skipped"]
    assert skip["identifier"] == "Utrecht_1" and skip["file"].endswith("Utrecht/1/wmh.nii.gz")
    assert skip["problem"] == "origin differs from T1.nii.gz"
    assert abs(skip["found"][0] - skip["expected"][0]) == pytest.approx(2.0)
    written = nib.load(next(converted["folders"]["wmh"].glob("labels*/Utrecht_2.nii.gz")))
    assert np.allclose(written.affine[:3, 3], 0)  # written with the image's geometry


# ---- broken cases are reported and skipped ----
@pytest.mark.parametrize("kind, identifier, problem, file_end", [
    ("brats21", "BraTS2021_00009", "size differs from BraTS2021_00009_flair.nii.gz", "BraTS2021_00009_seg.nii.gz"),
    ("ixi", "IXI004-Guys-1004", "missing file", "IXI-PD/IXI004-Guys-1004-PD.nii.gz"),
    ("atlas2", "sub-r001s002_ses-1", "truncated", "sub-r001s002_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz"),
])
def test_broken_case_reported_and_skipped(converted, kind, identifier, problem, file_end):
    report, folder = converted["reports"][kind], converted["folders"][kind]
    [skip] = report["skipped"]
    assert (skip["identifier"], skip["problem"]) == (identifier, problem) and skip["file"].endswith(file_end)
    assert skip["found"] and skip["expected"]
    assert identifier not in cases_in(folder / "labelsTr") + cases_in(folder / "labelsTs")
    assert sum(report["converted"].values()) == (9 if kind == "brats21" else 4)
    if kind == "brats21":
        assert skip["found"] == [16, 20, 11] and skip["expected"] == [16, 20, 12]


@pytest.mark.parametrize("name, keep, problem", [("a.nii.gz", 0.6, "truncated"), ("a.nii.gz", 0.01, "unreadable"),
                                                 ("a.nii", 0.9, "truncated")])
def test_incomplete_file_detected(tmp_path, name, keep, problem):
    path = save(tmp_path / name, brain(0)[0])
    read_image(path)
    truncate(path, keep)
    with pytest.raises(CaseSkipped) as e:
        read_image(path)
    assert e.value.record["problem"] == problem and e.value.record["file"] == str(path)
    if problem == "truncated":
        if name == "a.nii":
            assert e.value.record["found"] == f"{path.stat().st_size} bytes"
        assert int(e.value.record["found"].split()[0]) < 352 + 4 * np.prod(SHAPE)
        assert e.value.record["expected"].startswith(f"{352 + 4 * np.prod(SHAPE)} bytes")


def test_non_finite_voxels_detected_from_the_stored_data(tmp_path):
    """SimpleITK reads NaN and inf as 0; the check reads the stored values."""
    image = brain(0)[0]
    image[3, 4, 5], image[6, 7, 8] = np.nan, -np.inf
    path = save(tmp_path / "nan.nii.gz", image)
    with pytest.raises(CaseSkipped) as e:
        read_image(path)
    assert e.value.record == {"file": str(path), "problem": "non-finite voxels", "found": "2 NaN/inf voxel(s)",
                              "expected": "finite values"}


def test_skull_strip_check_reported(converted):
    report = converted["reports"]["ixi"]
    verdicts = {c["identifier"]: c["skull_strip"] for c in report["cases"]}
    assert verdicts.pop("IXI003-Guys-1003") == NOT_STRIPPED and set(verdicts.values()) == {STRIPPED}
    assert report["skull_strip"] == {STRIPPED: 3, NOT_STRIPPED: 1, CANNOT_TELL: 0}


def test_skull_strip_verdicts():
    image, mask = brain(0)
    assert skull_strip_verdict(image)[0] == STRIPPED
    assert skull_strip_verdict(image - 3.0)[0] == STRIPPED  # constant background that is not zero
    noisy = image + np.random.default_rng(0).uniform(1, 5, SHAPE)
    assert skull_strip_verdict(noisy)[0] == NOT_STRIPPED
    pieces = image * (np.random.default_rng(1).random(SHAPE) < 0.1)
    assert skull_strip_verdict(pieces)[0] == CANNOT_TELL


# ---- splits ----
def test_default_split_reproducible_and_rerun_replaces(converted, sources, env):
    main(["brats21", str(sources["brats21"]), "615"])
    folder = env / "Dataset615_BraTS2021"
    split = json.loads((folder / "sadm_split.json").read_text())
    assert split == json.loads((converted["folders"]["brats21"] / "sadm_split.json").read_text())
    assert len(split["test"]) == 2 and len(split["train"]) == 8 and split["seed"] == 0
    assert cases_in(folder / "labelsTs") == split["test"]
    assert cases_in(folder / "labelsTr") == [c for c in split["train"] if c != "BraTS2021_00009"]
    ixi_split = json.loads((converted["folders"]["ixi"] / "sadm_split.json").read_text())
    assert ixi_split["test"] == [] and not (converted["folders"]["ixi"] / "imagesTs").exists()
    before = {p.name: p.read_bytes() for p in (folder / "labelsTr").iterdir()}
    main(["brats21", str(sources["brats21"]), "615"])  # replaces the earlier conversion
    assert {p.name: p.read_bytes() for p in (folder / "labelsTr").iterdir()} == before
    assert [p.name for p in env.iterdir()] == ["Dataset615_BraTS2021"]  # no temporary folders left
    main(["brats21", str(sources["brats21"]), "615", "--seed", "1"])
    assert json.loads((folder / "sadm_split.json").read_text())["test"] != split["test"]


def test_user_split_respected(sources, env, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"],
                                 "test": ["BraTS2021_00004"]}))
    main(["brats21", str(sources["brats21"]), "616", "--split", str(split)])
    folder = env / "Dataset616_BraTS2021"
    assert cases_in(folder / "labelsTr") == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    assert cases_in(folder / "imagesTs") == ["BraTS2021_00004_0000"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3
    report = json.loads((folder / "conversion_report.json").read_text())
    assert len(report["not_in_split"]) == 6 and report["skipped"] == []
    written = json.loads((folder / "sadm_split.json").read_text())
    assert written["train"] == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]

    split.write_text(json.dumps({"test": ["BraTS2021_00000"]}))  # only "test": all others train
    main(["brats21", str(sources["brats21"]), "616", "--split", str(split)])
    assert cases_in(folder / "labelsTs") == ["BraTS2021_00000"] and len(cases_in(folder / "labelsTr")) == 8

    split.write_text(json.dumps({"test": ["BraTS2021_00077"]}))
    with pytest.raises(SystemExit, match=r"not found in the source: \['BraTS2021_00077'\]"):
        main(["brats21", str(sources["brats21"]), "616", "--split", str(split)])
    split.write_text(json.dumps([{"train": [], "val": []}]))
    with pytest.raises(SystemExit, match="splits_final.json"):
        main(["brats21", str(sources["brats21"]), "616", "--split", str(split)])


# ---- clear errors ----
def test_errors(sources, env, monkeypatch, tmp_path):
    with pytest.raises(SystemExit, match=r"Unknown modality 'T1ce' for ixi; available: T1, T2, PD"):
        main(["ixi", str(sources["ixi"]), "617", "--modality", "t1", "T1ce"])
    with pytest.raises(SystemExit, match=r"No BraTS 2021 cases below .*BraTS2021_00000_t1.nii.gz; found other NIfTI "
                                         r"files, e.g. \['IXI-PD/IXI000-Guys-1000-PD.nii.gz'"):
        main(["brats21", str(sources["ixi"]), "617"])
    with pytest.raises(SystemExit, match="is not a folder"):
        main(["brats21", str(tmp_path / "nowhere"), "617"])
    with pytest.raises(SystemExit, match="--keep-labels: ixi has no sub-labels"):
        main(["ixi", str(sources["ixi"]), "617", "--keep-labels"])
    (env.parent / "results" / "Dataset617_Other").mkdir()
    with pytest.raises(SystemExit, match=r"Dataset id 617 is taken .*found \['Dataset617_Other'\], expected none "
                                         r"or Dataset617_IXI"):
        main(["ixi", str(sources["ixi"]), "617"])
    with pytest.raises(SystemExit, match="DATASET_ID must be 1-999 .*found 1000"):
        main(["ixi", str(sources["ixi"]), "1000"])
    with pytest.raises(SystemExit, match="--name must use letters.*found 'my data'"):
        main(["ixi", str(sources["ixi"]), "618", "--name", "my data"])
    inside = env / "Dataset618_IXI" / "release"  # the release downloaded into the folder it would be converted to
    shutil.copytree(sources["ixi"], inside)
    with pytest.raises(SystemExit, match=r"release.* lies inside the output folder .*Dataset618_IXI"):
        main(["ixi", str(inside), "618"])
    assert len(list(inside.rglob("*.nii.gz"))) == 14  # not replaced (deleted) by the conversion
    shutil.rmtree(env / "Dataset618_IXI")
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(SystemExit, match="nnUNet_raw is not set"):
        main(["ixi", str(sources["ixi"]), "618"])
    assert list(env.iterdir()) == []


def test_duplicate_files_and_nothing_converted(sources, env, tmp_path):
    release = sources["brats21"] / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData"
    for case in ("BraTS2021_00000", "BraTS2021_00001"):
        shutil.copytree(release / case, tmp_path / "src" / case)
    t1 = tmp_path / "src" / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"
    nib.save(nib.load(t1), t1.with_name("BraTS2021_00001_t1.nii"))  # the same image twice
    main(["brats21", str(tmp_path / "src"), "618"])
    report = json.loads((env / "Dataset618_BraTS2021" / "conversion_report.json").read_text())
    [skip] = report["skipped"]
    assert skip["problem"] == "several files for t1" and skip["expected"] == "one file"
    assert sorted(Path(f).name for f in skip["found"]) == ["BraTS2021_00001_t1.nii", "BraTS2021_00001_t1.nii.gz"]
    shutil.rmtree(tmp_path / "src" / "BraTS2021_00000")
    with pytest.raises(SystemExit, match="No training case could be converted"):
        main(["brats21", str(tmp_path / "src"), "619"])
    assert sorted(p.name for p in env.iterdir()) == ["Dataset618_BraTS2021"]


def test_a_folder_not_written_by_the_command_is_not_replaced(sources, env, capsys):
    mine = env / "Dataset805_BraTS2021"
    mine.mkdir()
    (mine / "README").write_text("my own dataset")
    with pytest.raises(SystemExit) as e:
        main(["brats21", str(sources["brats21"]), "805"])
    assert str(e.value).startswith(f"sadm_nnunet_convert: {mine} exists and was not written by sadm_nnunet_convert "
                                   f"(found ['README']")
    assert "--overwrite" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["README"] and "Replaced" not in capsys.readouterr().out
    main(["brats21", str(sources["brats21"]), "805", "--overwrite"])
    assert not (mine / "README").exists() and len(cases_in(mine / "labelsTr")) == 7
    assert "Replaced the earlier" in capsys.readouterr().out
    main(["brats21", str(sources["brats21"]), "805"])  # written by the command now: replaced without --overwrite
    assert "Replaced the earlier" in capsys.readouterr().out


def test_temporary_folders_of_a_killed_conversion_are_removed(sources, env, capsys):
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs: the writer of the leftovers below was killed
    from sadm_nnunet.io_utils import HOST_TAG
    stale = env / f".sadm-tmp-{dead.pid}-{HOST_TAG}-Dataset806_BraTS2021.x1y2z3"
    (stale / "imagesTr").mkdir(parents=True)
    (stale / "imagesTr" / "BraTS2021_00000_0000.nii.gz").write_bytes(b"x" * 1000)
    foreign = env / ".Dataset806_BraTS2021.tmp-abc"  # not our naming (nor the naming of older versions): kept
    foreign.mkdir()
    main(["brats21", str(sources["brats21"]), "806"])
    assert "Removed 1 temporary file(s)/folder(s) left in" in capsys.readouterr().out
    assert sorted(p.name for p in env.iterdir()) == [".Dataset806_BraTS2021.tmp-abc", "Dataset806_BraTS2021"]
