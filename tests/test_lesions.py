"""Synthetic lesions (sadm_nnunet.datasets.lesions) on real healthy brains, and the nnU-Net datasets built from them."""
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import HEALTHY_T1
from sadm_nnunet.datasets.healthy_cohort import load_brains, random_subject
from sadm_nnunet.datasets.lesions import (LESION_KINDS, build_lesion_dataset, generate_lesion, insert_lesion)

RESOLUTIONS = {"2mm": 1.0, "6mm": 1 / 3}


@pytest.fixture(scope="module")
def brains():
    return load_brains(HEALTHY_T1)


@pytest.fixture(scope="module")
def subjects(brains):
    """A deformed healthy subject at 2 mm (91x109x91) and another at 6 mm (30x36x30)."""
    out = {}
    for i, (res, zoom) in enumerate(RESOLUTIONS.items()):
        _, image, mask = brains[i]
        out[res] = random_subject(image, mask, np.random.default_rng(i), zoom)
    return out


def stats(image, mask):
    lo, p50, hi = np.percentile(image[mask], [1, 50, 99])
    return lo, p50, hi


def far_from(label, distance):
    return ndimage.distance_transform_edt(~label.astype(bool)) > distance


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("kind", LESION_KINDS)
def test_lesion_lies_in_the_brain_and_changes_intensities_only_near_its_label(subjects, kind, res):
    image, mask = subjects[res]
    original = image.copy()
    out, label = insert_lesion(image, mask, kind, np.random.default_rng(3))
    assert np.array_equal(image, original), "the input image must not be modified"
    assert out.dtype == np.float32 and out.shape == image.shape
    assert label.dtype == np.uint8 and label.shape == image.shape and set(np.unique(label)) == {0, 1}
    lesion = label.astype(bool)
    assert lesion.sum() >= 9
    assert not (lesion & ~mask).any()
    far = far_from(lesion, 2)
    assert far.sum() > 0.9 * far.size
    assert np.array_equal(out[far], image[far])
    assert np.array_equal(out[~mask], image[~mask])
    lo, _, hi = stats(image, mask)
    assert np.abs(out - image)[lesion].mean() > 0.1 * (hi - lo)


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_tumour_has_bright_rim_dark_core_and_mildly_bright_oedema(subjects, res):
    image, mask = subjects[res]
    lesion = generate_lesion(image, mask, "tumour", np.random.default_rng(4))
    core, rim, oedema = (lesion.parts[k] for k in ("core", "rim", "oedema"))
    label = lesion.label.astype(bool)
    assert core.any() and rim.any() and oedema.any()
    assert not (core & rim).any() and not (core & oedema).any() and not (rim & oedema).any()
    assert np.array_equal(core | rim | oedema, label)
    assert ndimage.label(label)[1] == 1
    lo, p50, hi = stats(image, mask)
    out = lesion.image
    assert out[rim].mean() > hi, "the enhancing rim is brighter than any normal tissue"
    assert out[rim].mean() > out[core].mean() + 0.5 * (hi - lo)
    assert out[core].mean() < p50
    assert image[oedema].mean() + 0.05 * (hi - lo) < out[oedema].mean() < out[rim].mean()
    # nested: the core lies deepest inside the lesion, the oedema outermost
    depth = ndimage.distance_transform_edt(label)
    assert depth[core].mean() > depth[rim].mean() > depth[oedema].mean()
    assert 0.01 < label.sum() / mask.sum() < 0.12


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_ms_gives_several_small_bright_white_matter_foci(subjects, res):
    image, mask = subjects[res]
    lo, _, hi = stats(image, mask)
    wm_threshold = np.percentile(image[mask], 60)
    counts = []
    for seed in range(4):
        out, label = insert_lesion(image, mask, "ms", np.random.default_rng(seed))
        foci = label.astype(bool)
        components, n = ndimage.label(foci)
        counts.append(n)
        assert 3 <= n <= 10
        assert np.bincount(components.ravel())[1:].max() < 0.01 * mask.sum()
        assert out[foci].mean() > hi
        assert out[foci].mean() > image[foci].mean() + 0.15 * (hi - lo)
        assert np.median(image[foci]) > wm_threshold
    assert len(set(counts)) > 1, "the number of foci is random"


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_stroke_is_one_large_dark_territory_reaching_the_brain_surface(subjects, res):
    image, mask = subjects[res]
    lo, p50, hi = stats(image, mask)
    surface = mask & ~ndimage.binary_erosion(mask)
    for seed in range(2):
        out, label = insert_lesion(image, mask, "stroke", np.random.default_rng(seed))
        territory = label.astype(bool)
        assert ndimage.label(territory)[1] == 1
        assert (territory & surface).any()
        assert 0.01 < territory.sum() / mask.sum() < 0.12
        shell = ndimage.binary_dilation(territory, iterations=2) & mask & ~territory
        assert out[territory].mean() < out[shell].mean() - 0.25 * (hi - lo)
        assert out[territory].mean() < image[territory].mean() - 0.25 * (hi - lo)
        assert out[territory].mean() < lo + 0.5 * (p50 - lo)


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_lesions_are_reproducible_from_the_seed(subjects, kind):
    image, mask = subjects["6mm"]
    a = generate_lesion(image, mask, kind, np.random.default_rng(7))
    b = generate_lesion(image, mask, kind, np.random.default_rng(7))
    c = generate_lesion(image, mask, kind, np.random.default_rng(8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    out, label = insert_lesion(image, mask, kind, np.random.default_rng(7))
    assert np.array_equal(out, a.image) and np.array_equal(label, a.label)


def test_lesion_sizes_follow_the_brain_not_the_voxel_grid(brains):
    """The same brain at 2 mm and at 6 mm gets lesions of similar physical volume."""
    _, image, mask = brains[2]
    volume = {}
    for res, zoom in RESOLUTIONS.items():
        subject, subject_mask = random_subject(image, mask, np.random.default_rng(0), zoom)
        spacing = 2.0 / zoom
        for kind in LESION_KINDS:
            voxels = [insert_lesion(subject, subject_mask, kind, np.random.default_rng(s))[1].sum() for s in range(3)]
            volume[kind, res] = np.mean(voxels) * spacing ** 3 / 1000  # ml
    for kind in ("tumour", "stroke"):
        assert 0.4 < volume[kind, "6mm"] / volume[kind, "2mm"] < 2.5, volume
    # MS foci have a floor of about one voxel at 6 mm, so they come out larger there, but stay far smaller
    assert volume["ms", "2mm"] < volume["ms", "6mm"] < 0.5 * volume["tumour", "6mm"], volume
    assert 10 < volume["tumour", "2mm"] < 200 and 10 < volume["stroke", "2mm"] < 200, volume


def test_bad_arguments_are_refused(subjects, tmp_path):
    image, mask = subjects["6mm"]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="Unknown lesion kind"):
        insert_lesion(image, mask, "glioma", rng)
    with pytest.raises(ValueError, match="same shape"):
        insert_lesion(image, mask[:-1], "tumour", rng)
    with pytest.raises(ValueError, match="too few"):
        insert_lesion(image, np.zeros_like(mask), "ms", rng)
    for kwargs in ({"kind": "glioma"}, {"kind": "ms", "split": "val"}, {"kind": "ms", "healthy_fraction": 1.5}):
        with pytest.raises(ValueError):
            build_lesion_dataset(HEALTHY_T1, tmp_path / "bad", 1, 0, **kwargs)
    assert not (tmp_path / "bad").exists()


def load(path):
    img = nib.load(path)
    return np.asarray(img.dataobj), img.header.get_zooms()


def test_build_lesion_dataset_writes_an_nnunet_dataset_and_a_held_out_test_set(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = tmp_path / "Dataset601_Tumour"
    assert build_lesion_dataset(HEALTHY_T1, folder, 3, seed=0, kind="tumour", zoom=1 / 3, spacing=6.0,
                                healthy_fraction=1 / 3) == folder
    cases = ["case_000", "case_001", "case_002"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "lesion": 1}
    assert dataset_json["numTraining"] == 3 and dataset_json["channel_names"] == {"0": "T1"}
    assert dataset_json["file_ending"] == ".nii.gz"
    manifest = json.loads((folder / "synthetic_lesions.json").read_text())
    lesion_voxels = []
    for case in cases:
        image, zooms = load(folder / "imagesTr" / f"{case}_0000.nii.gz")
        label, label_zooms = load(folder / "labelsTr" / f"{case}.nii.gz")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape == (30, 36, 30) and zooms == label_zooms == (6.0, 6.0, 6.0)
        assert set(np.unique(label)) <= {0, 1}
        lesion_voxels.append(int(label.sum()))
        record = manifest["cases"][case]
        assert record["lesion_voxels"] == lesion_voxels[-1] and record["split"] == "train"
        assert record["kind"] == ("tumour" if lesion_voxels[-1] else None)
    assert sorted(v > 20 for v in lesion_voxels) == [False, True, True], lesion_voxels

    # a held-out test set beside it: imagesTs/labelsTs, other subjects and lesions, dataset.json untouched
    before = (folder / "dataset.json").read_bytes()
    build_lesion_dataset(HEALTHY_T1, folder, 2, seed=0, kind="stroke", zoom=1 / 3, spacing=6.0, first_index=3,
                         split="test")
    assert (folder / "dataset.json").read_bytes() == before
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["case_003_0000.nii.gz", "case_004_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["case_003.nii.gz", "case_004.nii.gz"]
    assert len(list((folder / "imagesTr").iterdir())) == 3
    test_image, _ = load(folder / "imagesTs" / "case_003_0000.nii.gz")
    test_label, _ = load(folder / "labelsTs" / "case_003.nii.gz")
    assert test_label.sum() > 20
    for case in cases:
        assert not np.array_equal(test_image, load(folder / "imagesTr" / f"{case}_0000.nii.gz")[0])
    manifest = json.loads((folder / "synthetic_lesions.json").read_text())
    assert sorted(manifest["cases"]) == cases + ["case_003", "case_004"]
    assert manifest["cases"]["case_003"]["split"] == "test" and manifest["cases"]["case_003"]["kind"] == "stroke"

    verify_dataset_integrity(str(folder), num_processes=1)


def test_build_lesion_dataset_is_reproducible_and_case_k_depends_only_on_seed_and_k(tmp_path):
    def arrays(folder, case):
        return (load(folder / "imagesTr" / f"{case}_0000.nii.gz")[0], load(folder / "labelsTr" / f"{case}.nii.gz")[0])

    small = build_lesion_dataset(HEALTHY_T1, tmp_path / "a", 2, seed=5, kind="ms", zoom=1 / 3, spacing=6.0)
    large = build_lesion_dataset(HEALTHY_T1, tmp_path / "b", 3, seed=5, kind="ms", zoom=1 / 3, spacing=6.0)
    other = build_lesion_dataset(HEALTHY_T1, tmp_path / "c", 1, seed=6, kind="ms", zoom=1 / 3, spacing=6.0)
    alone = build_lesion_dataset(HEALTHY_T1, tmp_path / "d", 1, seed=5, kind="ms", zoom=1 / 3, spacing=6.0,
                                 first_index=2)
    assert all(np.array_equal(x, y) for x, y in zip(arrays(alone, "case_002"), arrays(large, "case_002")))
    for case in ("case_000", "case_001"):
        (image_a, label_a), (image_b, label_b) = arrays(small, case), arrays(large, case)
        assert image_a.tobytes() == image_b.tobytes() and label_a.tobytes() == label_b.tobytes()
        assert ndimage.label(label_a)[1] >= 3
    assert not np.array_equal(arrays(small, "case_000")[0], arrays(large, "case_002")[0])
    assert not np.array_equal(arrays(small, "case_000")[1], arrays(other, "case_000")[1])
