import multiprocessing
import os
import pickle
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from sadm_nnunet.diffusion.settings import load_template
from sadm_nnunet.segmentation.settings import SyntheticAnomalySettings
from sadm_nnunet.training.sadm_trainer import synthetic_anomaly_transform
from sadm_nnunet.training.synthetic_anomalies import (INTENSITY_OPERATIONS, SyntheticAnomalyTransform,
                                                      anomaly_mask, anomaly_source, insert_anomaly, perlin_noise)

SYNTHETIC = load_template("sadm.json")["synthetic_anomalies"]  # the template defaults the trainers use
K_MAX = SYNTHETIC["max_scale_exponent"]
BLEND = {"blend_range": (SYNTHETIC["blend_min"], SYNTHETIC["blend_max"]), "max_scale_exponent": K_MAX}


def transform(**kwargs) -> SyntheticAnomalyTransform:
    """The transform with the template's settings (probability 0.5 unless given)."""
    return SyntheticAnomalyTransform(**{"probability": 0.5, "label": SYNTHETIC["label"], **BLEND, **kwargs})


def brain_sample(spatial: tuple[int, ...], seed: int, channels: int = 1, lesion: bool = False):
    """A sample as nnU-Net's data loader hands it to the transforms after masking: an ellipsoidal 'brain' with
    smooth z-scored intensities, image 0 and segmentation -1 outside; optionally a labelled lesion (1 and 2)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(spatial, dtype=np.float32)
    centre = (np.asarray(spatial, dtype=np.float32) - 1)[:, None] / 2
    radius = 0.42 * np.asarray(spatial, dtype=np.float32)
    r2 = (((grid.reshape(len(spatial), -1) - centre) / radius[:, None]) ** 2).sum(0).reshape(spatial)
    brain = r2 < 1
    image = np.zeros((channels, *spatial), dtype=np.float32)
    for c in range(channels):
        smooth = ndimage.gaussian_filter(rng.standard_normal(spatial).astype(np.float32), 3)
        values = smooth + 0.2 * rng.standard_normal(spatial).astype(np.float32) + 2 * r2
        values = (values - values[brain].mean()) / values[brain].std()
        image[c][brain] = values[brain]
    seg = np.where(brain, 0, -1).astype(np.int16)[None]
    if lesion:
        seg[0][(r2 < 0.1)] = 1
        seg[0][(r2 < 0.03)] = 2
    return torch.from_numpy(image), torch.from_numpy(seg)


def run(transform: SyntheticAnomalyTransform, image: torch.Tensor, seg: torch.Tensor):
    out = transform(image=image.clone(), segmentation=seg.clone())
    return out["image"], out["segmentation"]


# ---------------------------------------------------------------- Perlin noise and masks

@pytest.mark.parametrize("shape, cells", [((96, 80), (4, 8)), ((40, 32, 24), (4, 4, 2))])
def test_perlin_noise_shape_range_and_seeding(shape, cells):
    a = perlin_noise(shape, cells, np.random.default_rng(0), rotation=True)
    b = perlin_noise(shape, cells, np.random.default_rng(0), rotation=True)
    c = perlin_noise(shape, cells, np.random.default_rng(1), rotation=True)
    assert a.shape == shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 0.1
    assert np.abs(a).max() <= 1.0 and 0.1 < a.std() < 0.5
    assert abs(float(a.mean())) < 0.25


def test_perlin_noise_is_smooth_at_its_cell_size():
    rng = np.random.default_rng(3)
    coarse = perlin_noise((128, 128), 4, rng)
    fine = perlin_noise((128, 128), 32, rng)

    def neighbour_corr(x):
        return np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]

    assert neighbour_corr(coarse) > 0.99
    assert neighbour_corr(fine) < neighbour_corr(coarse) - 0.1
    # continuity: no jumps between neighbouring voxels (the largest possible slope is about 2 * cells / size)
    assert np.abs(np.diff(coarse, axis=0)).max() < 0.2
    # the quintic fade makes the field twice differentiable: no kinks at cell borders (linear blending gives
    # second differences of about half the largest first difference there; quintic about 0.06)
    smooth = perlin_noise((256, 256), 4, rng)
    for axis in (0, 1):
        assert np.abs(np.diff(smooth, n=2, axis=axis)).max() < 0.15 * np.abs(np.diff(smooth, axis=axis)).max()


def test_perlin_rotation_rotates_the_field():
    # 1 cell along axis 0 and 16 along axis 1: stripes varying along axis 1; a 90 degree rotation swaps that
    stripes = perlin_noise((64, 64), (1, 16), np.random.default_rng(5))
    rotated = perlin_noise((64, 64), (1, 16), np.random.default_rng(5), rotation=np.array([[0.0, -1.0], [1.0, 0.0]]))

    def variation(x, axis):
        return float(np.abs(np.diff(x, axis=axis)).mean())

    assert variation(stripes, 1) > 4 * variation(stripes, 0)
    assert variation(rotated, 0) > 4 * variation(rotated, 1)


def test_anomaly_mask_stays_in_region_and_scales():
    _, seg = brain_sample((96, 80), 0)
    brain = seg[0].numpy() >= 0
    rng = np.random.default_rng(0)
    masks = [anomaly_mask(brain.shape, rng, max_scale_exponent=K_MAX, where=brain) for _ in range(30)]
    assert all(m.dtype == bool and m.shape == brain.shape and not (m & ~brain).any() for m in masks)
    fractions = np.array([m.sum() / brain.sum() for m in masks])
    assert (fractions > 0).mean() > 0.7
    assert 0.01 < fractions.mean() < 0.2  # DRAEM's 2D masks cover about 5% of the image
    # 3D masks cover about the same fraction as 2D ones (the noise is rescaled for that)
    fractions_3d = [anomaly_mask((48, 48, 48), rng, max_scale_exponent=K_MAX).mean() for _ in range(20)]
    assert 0.01 < np.mean(fractions_3d) < 0.2
    # k = 0 only: one lattice cell per axis, so few large blobs; high scales give many small ones
    blobs_low = np.mean([ndimage.label(anomaly_mask((128, 128), rng, max_scale_exponent=0))[1] for _ in range(20)])
    blobs_high = np.mean([ndimage.label(anomaly_mask((128, 128), np.random.default_rng(i), max_scale_exponent=6,
                                                     threshold=0.5))[1] for i in range(20)])
    assert blobs_low < 3 < blobs_high


def test_anomaly_mask_clips_cells_on_small_shapes():
    # 2**12 cells requested on 6 voxels: clipped to 3 cells, so the field stays smooth and well defined
    m = anomaly_mask((6, 6, 6), np.random.default_rng(0), max_scale_exponent=12, threshold=-2)
    assert m.all()


# ---------------------------------------------------------------- anomaly source

@pytest.mark.parametrize("shape", [(30, 20), (12, 10, 8)])
def test_anomaly_source_is_a_texture_in_unit_range(shape):
    sources = [anomaly_source(shape, np.random.default_rng(i)) for i in range(20)]
    assert all(s.shape == shape and s.dtype == np.float32 for s in sources)
    assert all(s.min() >= 0 and s.max() <= 1 for s in sources)
    assert np.mean([s.std() > 0.02 for s in sources]) > 0.8
    assert np.array_equal(sources[0], anomaly_source(shape, np.random.default_rng(0)))
    assert not np.array_equal(sources[0], sources[1])


def test_intensity_operations():
    rng = np.random.default_rng(0)
    x = (rng.random((40, 40), dtype=np.float32) ** 3).astype(np.float32)  # skewed towards 0
    ops = INTENSITY_OPERATIONS
    assert set(ops) == {"gamma", "brightness", "contrast", "sharpness", "solarize", "posterize", "invert",
                        "autocontrast", "equalize"}
    assert np.allclose(ops["invert"](x, rng), 1 - x)
    eq = ops["equalize"](x, rng)
    assert np.allclose(np.quantile(eq, [0.1, 0.5, 0.9]), [0.1, 0.5, 0.9], atol=0.03)
    assert np.all(np.diff(eq.ravel()[np.argsort(x.ravel())]) >= 0)  # monotone
    poster = ops["posterize"](x, rng)
    assert len(np.unique(poster)) <= 128 and np.abs(poster - x).max() <= 0.5
    auto = ops["autocontrast"](0.3 + 0.2 * x, rng)
    assert auto.min() <= 0.01 and auto.max() >= 0.99
    sol = ops["solarize"](x, rng)
    assert np.allclose(sol[x < 32 / 255], x[x < 32 / 255]) and np.allclose(sol[x >= 128 / 255], 1 - x[x >= 128 / 255])
    gamma = ops["gamma"](x, rng)
    assert np.all(np.diff(gamma.ravel()[np.argsort(x.ravel())]) >= -1e-7)
    for name, op in ops.items():
        assert op(x, rng).shape == x.shape, name


# ---------------------------------------------------------------- insertion

def test_insert_anomaly_changes_the_image_inside_the_mask_only():
    image, seg = brain_sample((96, 80), 1, channels=2)
    image = image.numpy()
    brain = seg[0].numpy() >= 0
    out, mask = insert_anomaly(image, brain, np.random.default_rng(0), **BLEND)
    assert out.dtype == np.float32 and out.shape == image.shape and mask.shape == brain.shape
    assert mask.sum() >= 16 and not (mask & ~brain).any()
    changed = (out != image).any(axis=0)
    assert not (changed & ~mask).any()
    assert changed[mask].mean() > 0.99
    # the result is a blend of the image and a source inside the brain's 1st..99th percentile range
    lo, hi = np.percentile(image[:, brain], [1, 99], axis=1)
    for c in range(2):
        assert out[c][mask].min() >= min(image[c][mask].min(), lo[c]) - 1e-5
        assert out[c][mask].max() <= max(image[c][mask].max(), hi[c]) + 1e-5
    # beta = 1: the anomaly replaces the image, so the mask holds the source alone
    full, mask_full = insert_anomaly(image, brain, np.random.default_rng(0), blend_range=(1.0, 1.0), max_scale_exponent=K_MAX)
    assert np.array_equal(mask_full, mask)
    for c in range(2):
        assert lo[c] - 1e-5 <= full[c][mask].min() and full[c][mask].max() <= hi[c] + 1e-5
    assert np.abs(full - image)[:, mask].mean() > np.abs(out - image)[:, mask].mean() * 0.9


def test_insert_anomaly_gives_up_without_enough_brain():
    image, seg = brain_sample((32, 32), 2)
    image = image.numpy()
    nothing = np.zeros((32, 32), dtype=bool)
    out, mask = insert_anomaly(image, nothing, np.random.default_rng(0), **BLEND)
    assert not mask.any() and np.array_equal(out, image)
    out, mask = insert_anomaly(image, seg[0].numpy() >= 0, np.random.default_rng(0), min_voxels=10**6, **BLEND)
    assert not mask.any() and np.array_equal(out, image)


# ---------------------------------------------------------------- the transform

@pytest.mark.parametrize("spatial", [(96, 80), (32, 40, 24)])
def test_transform_label_equals_mask_and_background_stays(spatial):
    image, seg = brain_sample(spatial, 3, channels=2)
    t = transform(probability=1.0, label=1, deterministic=True, seed=0)
    params = t.get_parameters(image=image, segmentation=seg)
    out_image, out_seg = run(t, image, seg)
    assert isinstance(out_image, torch.Tensor) and isinstance(out_seg, torch.Tensor)
    assert out_image.dtype == image.dtype and out_seg.dtype == seg.dtype
    assert out_image.shape == image.shape and out_seg.shape == seg.shape
    mask = params["mask"]
    assert mask is not None and mask.sum() >= 16
    assert np.array_equal(out_seg[0].numpy() == 1, mask)
    assert torch.equal(out_seg[seg < 0], seg[seg < 0])  # -1 stays -1
    assert set(np.unique(out_seg.numpy())) == {-1, 0, 1}
    changed = (out_image != image).any(dim=0).numpy()
    assert not (changed & ~mask).any() and changed[mask].mean() > 0.99


def test_brain_excludes_ignore_label_and_zero_image():
    image, seg = brain_sample((64, 64), 4)
    image = torch.where(image == 0, torch.tensor(0.7), image)  # no image masking: nonzero everywhere
    seg = torch.zeros_like(seg)
    seg[0, :, :20] = -1  # ignore region with nonzero image
    image[0, 50:] = 0  # zero image with segmentation 0
    t = transform(probability=1.0, replace_labels=True, seed=1)
    for _ in range(15):
        out_image, out_seg = run(t, image, seg)
        labelled = out_seg[0] == 1
        assert not labelled[:, :20].any() and not labelled[50:].any()
        assert (out_seg[0, :, :20] == -1).all()
        assert torch.equal(out_image[0, 50:], image[0, 50:])


def test_replace_labels_clears_dataset_labels():
    image, seg = brain_sample((96, 80), 5, lesion=True)
    assert (seg == 2).any()
    t = transform(probability=1.0, label=3, replace_labels=True, seed=0, deterministic=True)
    mask = t.get_parameters(image=image, segmentation=seg)["mask"]
    out_image, out_seg = run(t, image, seg)
    assert set(np.unique(out_seg.numpy())) == {-1, 0, 3}
    assert np.array_equal(out_seg[0].numpy() == 3, mask)
    assert torch.equal(out_seg < 0, seg < 0)
    # probability 0: no anomaly, but the dataset labels are still cleared (healthy sample)
    out_image, out_seg = run(transform(probability=0.0, replace_labels=True), image, seg)
    assert torch.equal(out_image, image)
    assert torch.equal(out_seg, torch.where(seg > 0, torch.zeros_like(seg), seg))


def test_only_healthy_samples_are_eligible_without_replace_labels():
    t = transform(probability=1.0, replace_labels=False, seed=0)
    lesion_image, lesion_seg = brain_sample((96, 80), 6, lesion=True)
    for _ in range(5):
        out_image, out_seg = run(t, lesion_image, lesion_seg)
        assert torch.equal(out_image, lesion_image) and torch.equal(out_seg, lesion_seg)
    healthy_image, healthy_seg = brain_sample((96, 80), 7)
    for _ in range(5):
        out_image, out_seg = run(t, healthy_image, healthy_seg)
        assert (out_seg == 1).sum() >= 16 and not torch.equal(out_image, healthy_image)


def test_probability_is_respected():
    image, seg = brain_sample((48, 40), 8)
    t = transform(probability=0.5, seed=123)
    hits = sum(bool((run(t, image, seg)[1] == 1).any()) for _ in range(200))
    assert 70 <= hits <= 130  # binomial(200, 0.5): mean 100, sd 7
    t_low = transform(probability=0.1, seed=123)
    assert sum(bool((run(t_low, image, seg)[1] == 1).any()) for _ in range(100)) <= 25


def test_deterministic_mode_is_order_and_instance_independent():
    samples = [brain_sample((64, 56), s, channels=2) for s in (10, 11, 12)]
    a = transform(probability=1.0, deterministic=True, seed=7)
    b = transform(probability=1.0, deterministic=True, seed=7)
    forward = [run(a, *s) for s in samples]
    backward = [run(b, *s) for s in reversed(samples)][::-1]
    again = [run(a, *s) for s in samples]
    for (i1, s1), (i2, s2), (i3, s3) in zip(forward, backward, again):
        assert torch.equal(i1, i2) and torch.equal(s1, s2) and torch.equal(i1, i3) and torch.equal(s1, s3)
    assert not torch.equal(forward[0][1], forward[1][1])  # different patches, different anomalies
    other_seed = transform(probability=1.0, deterministic=True, seed=8)
    assert not torch.equal(run(other_seed, *samples[0])[1], forward[0][1])


def test_seeded_and_unseeded_streams():
    image, seg = brain_sample((64, 56), 13)
    first = [run(transform(probability=1.0, seed=5), image, seg)[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # same seed, same first anomaly
    t = transform(probability=1.0, seed=5)
    assert not torch.equal(run(t, image, seg)[1], run(t, image, seg)[1])  # the stream moves on
    fresh = [run(transform(probability=1.0, seed=None), image, seg)[1] for _ in range(2)]
    assert not torch.equal(fresh[0], fresh[1])


def test_pickle_round_trip_and_repr():
    image, seg = brain_sample((64, 56), 14)
    seeded = transform(probability=1.0, label=2, replace_labels=True, seed=3,
                                       blend_range=(0.5, 0.9), max_scale_exponent=4)
    run(seeded, image, seg)  # advance the stream; a copy continues from the same state
    copy = pickle.loads(pickle.dumps(seeded))
    assert torch.equal(run(seeded, image, seg)[1], run(copy, image, seg)[1])
    text = repr(copy)
    for part in ("SyntheticAnomalyTransform(", "probability=1.0", "label=2", "replace_labels=True", "seed=3",
                 "deterministic=False", "blend_range=(0.5, 0.9)", "max_scale_exponent=4"):
        assert part in text
    unseeded = transform(probability=1.0)
    run(unseeded, image, seg)
    copies = [pickle.loads(pickle.dumps(unseeded)) for _ in range(2)]
    assert not torch.equal(run(copies[0], image, seg)[1], run(copies[1], image, seg)[1])


def test_invalid_settings():
    with pytest.raises(ValueError, match="probability"):
        transform(probability=1.5)
    with pytest.raises(ValueError, match="label"):
        transform(label=0)
    with pytest.raises(ValueError, match="blend_range"):
        transform(blend_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="segmentation"):
        transform()(image=torch.zeros(1, 8, 8))


# ---------------------------------------------------------------- worker processes

_WORKER_TRANSFORMS: list = []


def _start_worker(barrier, transforms) -> None:
    """Pool initializer: keeps the transforms as a data-loader worker does (inherited on fork, unpickled on spawn)
    and waits until both workers run, so that both take tasks."""
    _WORKER_TRANSFORMS[:] = transforms
    barrier.wait(timeout=60)


def _apply_in_worker(args):
    index, image, seg = args
    time.sleep(0.2)  # let the other worker take a task too
    out = _WORKER_TRANSFORMS[index](image=image, segmentation=seg)
    return os.getpid(), out["image"], out["segmentation"]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_transform_in_worker_processes(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} on this platform")
    ctx = multiprocessing.get_context(method)
    image, seg = brain_sample((64, 56), 15)
    unseeded = transform(probability=1.0)
    run(unseeded, image, seg)  # the parent's generator exists before the workers start
    deterministic = transform(probability=1.0, deterministic=True, seed=2)
    expected_image, expected_seg = run(deterministic, image, seg)
    barrier = ctx.Barrier(2)
    with ctx.Pool(2, initializer=_start_worker, initargs=(barrier, [unseeded, deterministic])) as pool:
        results = pool.map(_apply_in_worker, [(0, image, seg)] * 4 + [(1, image, seg)] * 2, chunksize=1)
    unseeded_results, deterministic_results = results[:4], results[4:]
    # each worker has one transform; workers must not repeat each other's (or the parent's) random stream
    assert len({pid for pid, _, _ in unseeded_results}) == 2
    labels = [s for _, _, s in unseeded_results] + [run(unseeded, image, seg)[1]]
    assert all((s == 1).sum() >= 16 for s in labels)
    assert all(not torch.equal(labels[i], labels[j]) for i in range(5) for j in range(i + 1, 5))
    for _, out_image, out_seg in deterministic_results:
        assert torch.equal(out_image, expected_image) and torch.equal(out_seg, expected_seg)


# ---------------------------------------------------------------- speed (printed, not asserted)

@pytest.mark.parametrize("spatial, calls", [((96, 80), 40), ((64, 64, 64), 5)])
def test_speed_smoke(spatial, calls):
    image, seg = brain_sample(spatial, 16)
    t = transform(probability=1.0, replace_labels=True, seed=0)
    run(t, image, seg)
    start = time.perf_counter()
    for _ in range(calls):
        out_image, out_seg = run(t, image, seg)
        assert (out_seg == 1).sum() >= 16
    per_call = (time.perf_counter() - start) / calls
    print(f"\nSyntheticAnomalyTransform on (1, {', '.join(map(str, spatial))}): {1000 * per_call:.1f} ms per call")


def test_the_trainers_build_the_transform_from_the_plans_block():
    """SADMTrainer uses the plans' probability; the self-supervised trainers put an anomaly on every patch and
    replace the labels; validation draws are deterministic, training draws are not."""
    settings = SyntheticAnomalySettings(probability=0.25, label=2, blend_min=0.1, blend_max=0.6,
                                        max_scale_exponent=3)
    labelled = synthetic_anomaly_transform(settings, replace_labels=False, validation=False)
    assert (labelled.probability, labelled.label, labelled.replace_labels) == (0.25, 2, False)
    assert (labelled.blend_range, labelled.max_scale_exponent) == ((0.1, 0.6), 3)
    assert (labelled.seed, labelled.deterministic) == (None, False)
    draem = synthetic_anomaly_transform(settings, replace_labels=True, validation=True)
    assert (draem.probability, draem.replace_labels, draem.seed, draem.deterministic) == (1.0, True, 0, True)
