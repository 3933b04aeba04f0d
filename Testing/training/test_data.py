"""Data discovery, partial labels, broken cases, split, case cache and training patches."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import torch
from MTSSSegmenterLib.errors import InputError
from MTSSTrainingLib.cache import CaseCache, from_prepared
from MTSSTrainingLib.data import discover, make_split, population_from_name
from MTSSTrainingLib.runconfig import TrainConfig
from MTSSTrainingLib.transforms import (
    AugmentConfig,
    PatchSampler,
    bias_field,
    choose_subset,
    degrade,
    network_inputs,
    thick_slices,
)

from .cohort import one_thread, write_fake_case  # noqa: F401  (autouse)

PRE = TrainConfig(command="train-joint", data=["x"], out="y", spacing=4.0, network={"channels": [8, 16, 32],
                                                                                     "deep_supervision": 1}).preprocessing()


@pytest.fixture
def mixed_data(tmp_path):
    root = tmp_path / "DATA"
    write_fake_case(root / "glioma", "BraTS-GLI-00001-000", 1)
    write_fake_case(root / "glioma", "BraTS-GLI-00002-000", 2)
    nolabel = write_fake_case(root / "glioma", "BraTS-GLI-00003-000", 3)
    (nolabel / "BraTS-GLI-00003-000-seg.nii.gz").unlink()
    write_fake_case(root / "men_wt", "BraTS-MEN-00001-000", 4, labels=(2,))
    (root / "men_wt" / "cohort.json").write_text(json.dumps({"labels": ["WT"]}))
    write_fake_case(root / "adult2021", "BraTS2021_00007", 5, naming="2021")
    write_fake_case(root / "other", "Patient7", 6)
    write_fake_case(root / "other", "Mystery-1", 7)
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"Patient7": "ped"}))
    return root, mapping


def test_discover_populations_partial_labels_and_broken(mixed_data):
    root, mapping = mixed_data
    index = discover(root, mapping)
    pops = {c.name: c.population for c in index.cases}
    assert pops == {"BraTS-GLI-00001-000": "GLI", "BraTS-GLI-00002-000": "GLI", "BraTS-MEN-00001-000": "MEN",
                    "BraTS2021_00007": "GLI", "Patient7": "PED"}
    men = index.by_name()["BraTS-MEN-00001-000"]
    assert men.labels == ("WT",) and men.label_mask == (1.0, 0.0, 0.0)
    assert index.datasets["men_wt"] == ["WT"] and index.datasets["glioma"] == ["WT", "TC", "ET"]
    assert "partial labels: men_wt: WT" in index.summary()
    broken = {b.name: b.reason for b in index.broken}
    assert set(broken) == {"BraTS-GLI-00003-000", "Mystery-1"}
    assert "no label map" in broken["BraTS-GLI-00003-000"]
    assert "mapping file" in broken["Mystery-1"] and "BraTS-<POP>" in broken["Mystery-1"]
    # without the mapping, Patient7 is left out too (not fatal)
    assert "Patient7" in {b.name for b in discover(root).broken}


def test_synth_cohort_json_is_read(tmp_path):
    root = tmp_path / "synth"
    write_fake_case(root, "BraTS-SSA-00000-000", 1)
    write_fake_case(root, "BraTS-MET-00000-000", 2)
    doc = {"generator": "mtss synth", "synthetic": True, "populations": ["SSA", "MET"],
           "cases": [{"case": "BraTS-SSA-00000-000", "population": "SSA", "seed": 1}]}
    (root / "cohort.json").write_text(json.dumps(doc))
    index = discover(root)
    assert index.synthetic and index.populations() == ["SSA", "MET"]
    assert index.to_dict()["synthetic"] is True
    (root / "cohort.json").write_text(json.dumps({**doc, "synthetic": False}))
    assert not discover(root).synthetic


def test_population_from_name_and_mapping_errors(tmp_path):
    assert population_from_name("BraTS-MET-00012-000") == "MET"
    assert population_from_name("BraTS2021_00100") == "GLI"
    assert population_from_name("case-1") is None
    write_fake_case(tmp_path / "d", "BraTS-GLI-00001-000", 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        discover(tmp_path / "d", bad)
    bad.write_text(json.dumps({"labels": ["WT", "XT"]}))
    with pytest.raises(InputError, match="Unknown region 'XT'"):
        discover(tmp_path / "d", bad)
    with pytest.raises(InputError, match="does not exist"):
        discover(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="mtss synth"):
        discover(tmp_path / "empty")


def test_corrupt_case_is_left_out_and_others_prepared(tmp_path):
    root = tmp_path / "d"
    write_fake_case(root, "BraTS-GLI-00001-000", 1)
    write_fake_case(root, "BraTS2021_00002", 2, naming="2021")
    bad = write_fake_case(root, "BraTS-GLI-00003-000", 3)
    target = bad / "BraTS-GLI-00003-000-t2w.nii.gz"
    target.write_bytes(gzip.compress(b"this is not a nifti file"))
    index = discover(root)
    assert len(index.cases) == 3  # found; the file is only read while preparing
    cache = CaseCache(PRE, tmp_path / "cache")
    broken = cache.fill(index.cases, workers=2)  # prepared in two processes
    assert [b.name for b in broken] == ["BraTS-GLI-00003-000"]
    assert "t2w" in broken[0].reason and "cannot be prepared" in broken[0].reason
    index.leave_out(broken)
    assert [c.name for c in index.cases] == ["BraTS-GLI-00001-000", "BraTS2021_00002"]
    case = cache.get("BraTS2021_00002")
    assert case.image.shape[0] == 4 and case.image.dtype == np.float16
    assert set(np.unique(case.seg)) <= {0, 1, 2, 3} and (case.seg == 3).any()  # label 4 became 3
    assert case.present.tolist() == [1, 1, 1, 1] and case.spacing_zyx == (4.0, 4.0, 4.0)


def test_cache_spills_to_disk_beyond_budget(tmp_path):
    root = tmp_path / "d"
    for i in range(2):
        write_fake_case(root, f"BraTS-PED-0000{i}-000", i)
    index = discover(root)
    ram = CaseCache(PRE, None, budget_bytes=1 << 30)
    ram.fill(index.cases)
    disk = CaseCache(PRE, tmp_path / "cache", budget_bytes=0)
    assert disk.fill(index.cases) == []
    assert len(list((tmp_path / "cache").rglob("*.image.npy"))) == 2
    assert "0 cases in memory" in disk.describe() and "2 on disk" in disk.describe()
    for name in ram.names():
        a, b = ram.get(name), disk.get(name)
        assert isinstance(b.image, np.memmap)
        np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        np.testing.assert_array_equal(np.asarray(a.seg), np.asarray(b.seg))
        np.testing.assert_array_equal(np.asarray(a.fractions), np.asarray(b.fractions))
        assert np.asarray(b.fractions)[0].any()  # the tumour's shares came back from disk
    # a second cache over the same folder reuses the files instead of preparing again
    again = CaseCache(PRE, tmp_path / "cache", budget_bytes=1 << 30)
    again.fill(index.cases)
    assert again.describe().startswith("2 cases in memory")


def test_persistent_cache_is_shared_between_runs(tmp_path, monkeypatch):
    """--cache-dir: every case is written even when it fits in memory, and a second run prepares nothing."""
    import MTSSTrainingLib.cache as cache_module

    root = tmp_path / "d"
    for i in range(2):
        write_fake_case(root, f"BraTS-MET-0000{i}-000", i)
    index = discover(root)
    first = CaseCache(PRE, tmp_path / "shared", budget_bytes=1 << 30, persist=True)
    assert first.fill(index.cases) == [] and first.describe().startswith("2 cases in memory")
    assert len(list((tmp_path / "shared").rglob("*.image.npy"))) == 2

    def must_not_prepare(*args):
        raise AssertionError("prepared again")

    monkeypatch.setattr(cache_module, "prepare_record", must_not_prepare)
    second = CaseCache(PRE, tmp_path / "shared", budget_bytes=1 << 30, persist=True)
    assert second.fill(index.cases) == [] and len(second) == 2
    np.testing.assert_array_equal(np.asarray(first.get("BraTS-MET-00001-000").image),
                                  np.asarray(second.get("BraTS-MET-00001-000").image))
    # a changed file is prepared again (its size and time are part of the entry)
    img = next((root / "BraTS-MET-00001-000").glob("*-t1c.nii.gz"))
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="prepared again"):
        CaseCache(PRE, tmp_path / "shared", budget_bytes=1 << 30, persist=True).fill(index.cases)


def test_persistent_cache_key_follows_the_preparation_code(tmp_path, monkeypatch):
    """Cases prepared by older registration or brain-extraction code are not served from --cache-dir."""
    import MTSSTrainingLib.cache as cache_module

    before = CaseCache(PRE, tmp_path, persist=True).folder
    assert before == CaseCache(PRE, tmp_path, persist=True).folder
    assert "skull" in cache_module.PREPARATION_MODULES and "registration" in cache_module.PREPARATION_MODULES
    monkeypatch.setattr(cache_module, "preparation_fingerprint", lambda: "edited skull.py")
    assert CaseCache(PRE, tmp_path, persist=True).folder != before


def test_split_is_stratified_and_deterministic(tmp_path):
    from MTSSTrainingLib.data import CaseRecord

    recs = [CaseRecord(f"BraTS-{p}-{i:05d}-000", tmp_path, p, {}, None, "d")
            for p, n in (("GLI", 5), ("MET", 3), ("PED", 1)) for i in range(n)]
    split = make_split(recs, 0.2, seed=3)
    pops_val = [n.split("-")[1] for n in split.val]
    assert sorted(pops_val) == ["GLI", "MET"]
    assert "BraTS-PED-00000-000" in split.train
    assert sorted(split.train + split.val) == sorted(r.name for r in recs)
    assert make_split(list(reversed(recs)), 0.2, seed=3).to_dict() == split.to_dict()
    assert any(make_split(recs, 0.2, seed=s).val != split.val for s in range(4, 10))
    with pytest.raises(InputError, match="val-fraction"):
        make_split(recs, 1.5, 0)


def _cached_case(seed: int = 0):
    from MTSSSegmenterLib.preprocess import PreparedCase, region_fractions

    rng = np.random.default_rng(seed)
    shape = (40, 44, 36)
    seg = np.zeros(shape, np.uint8)
    seg[18:24, 20:27, 14:20] = 2
    seg[20:22, 22:25, 16:18] = 1
    image = np.concatenate([rng.standard_normal((4,) + shape).astype(np.float32), np.ones((4,) + shape, np.float32)])
    image[2] = 0  # t2w missing
    image[6] = 0
    fine = np.repeat(seg, 2, axis=0)  # the label map at twice the resolution along z, with a thin enhancing layer
    fine[41] = np.where(fine[41] == 1, 3, fine[41])
    prepared = PreparedCase(image, ("t1n", "t1c", "t2f"), np.ones(shape, bool), seg, "t1c", None, (slice(0, 1),) * 3,
                            shape, (4.0, 4.0, 4.0), fractions=region_fractions(fine, shape))
    return from_prepared("BraTS-GLI-00001-000", "GLI", prepared)


def test_patch_sampler_is_deterministic_and_respects_missing_modalities():
    case = _cached_case()
    sampler = PatchSampler(AugmentConfig(patch=(16, 16, 16), pos_fraction=1.0, modality_dropout=0.5,
                                         spatial_prob=1.0, intensity_prob=1.0))
    a, b, c = sampler(case, 7), sampler(case, 7), sampler(case, 8)
    assert a["image"].shape == (4, 16, 16, 16) and a["target"].shape == (3, 16, 16, 16)
    torch.testing.assert_close(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"])
    for s in (sampler(case, k) for k in range(12)):
        assert s["target"][0].sum() > 0  # pos_fraction 1: every patch holds tumour
        assert torch.all(s["image"][2] == 0)  # the missing modality stays zero after augmentation
        assert s["keep"][2] == 0 and s["keep"].sum() >= 1 and torch.all(s["keep"] <= s["present"])
        assert torch.all(s["target"][2] <= s["target"][1]) and torch.all(s["target"][1] <= s["target"][0])


def test_soft_targets_are_the_region_shares_and_follow_the_patch():
    case = _cached_case()
    assert case.fractions.shape == (3, 40, 44, 36) and case.fractions.dtype == np.uint8
    assert int(case.fractions[2].max()) == 128  # the one 2 mm enhancing layer covers half of a 4 mm voxel
    assert not (case.seg == 3).any()  # which the nearest-neighbour labels lose
    hard = PatchSampler(AugmentConfig(patch=(16, 16, 16), pos_fraction=1.0, spatial_prob=0.0))
    soft = PatchSampler(AugmentConfig(patch=(16, 16, 16), pos_fraction=1.0, spatial_prob=0.0, soft_targets=True))
    a, b = hard(case, 3), soft(case, 3)  # same seed: same crop and flips
    assert set(torch.unique(a["target"]).tolist()) <= {0.0, 1.0} and a["target"][2].sum() == 0
    assert b["target"].dtype == torch.float32 and b["target"].shape == a["target"].shape
    torch.testing.assert_close(b["target"][:2], a["target"][:2])  # WT and TC fill whole voxels here
    assert b["target"][2].max() == pytest.approx(128 / 255) and b["target"][2].sum() > 0
    rotated = PatchSampler(AugmentConfig(patch=(16, 16, 16), pos_fraction=1.0, spatial_prob=1.0, soft_targets=True))
    t = rotated(case, 5)["target"]
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0 and ((t > 0.05) & (t < 0.95)).any()  # interpolated


def test_thick_slices_blur_only_along_their_axis():
    x = torch.zeros(24, 24, 24)
    x[:, :, 12] = 1.0  # a plane across x: thick slices along z leave it alone, along x smear it
    torch.testing.assert_close(thick_slices(x, 0, 3.0), x, atol=1e-5, rtol=0)
    smeared = thick_slices(x, 2, 3.0)
    assert smeared[:, :, 12].max() < 0.6 and smeared[:, :, 10:15].sum() == pytest.approx(x.sum(), rel=0.25)
    assert torch.equal(thick_slices(x, 1, 1.0), x)  # slices no thicker than the grid: unchanged


def test_bias_field_is_smooth_positive_and_scaled():
    rng = np.random.default_rng(3)
    f = bias_field((20, 22, 24), rng, 0.3)
    assert f.shape == (20, 22, 24) and bool((f > 0).all())
    assert float(torch.log(f).std()) == pytest.approx(0.3, rel=0.05)
    assert float(torch.diff(torch.log(f), dim=2).abs().max()) < 0.3  # smooth: no jumps between neighbours
    assert torch.equal(bias_field((4, 4, 4), np.random.default_rng(0), 0.0), torch.ones(4, 4, 4))


def test_clinical_degradations_keep_channels_z_scored_in_the_brain_and_change_them():
    case = _cached_case()
    image = torch.from_numpy(np.asarray(case.image, dtype=np.float32))
    brain = torch.from_numpy(case.brain)
    config = AugmentConfig(patch=(16, 16, 16), thick_slice_prob=1.0, bias_prob=1.0, thick_slice_mm=(8.0, 12.0))
    out = degrade(image, brain, np.random.default_rng(0), config, case.spacing_zyx, case.present)
    for c in (0, 1, 3):
        v = out[c][brain]
        assert float(v.mean()) == pytest.approx(0.0, abs=1e-4) and float(v.std()) == pytest.approx(1.0, abs=1e-3)
        assert not torch.allclose(out[c], image[c], atol=0.05)
    assert torch.equal(out[2], image[2])  # channel 2 is missing in this case: not degraded (it stays zeros)
    with pytest.raises(ValueError, match="thick_slice_mm"):
        AugmentConfig(thick_slice_mm=(6.0, 2.0))
    with pytest.raises(ValueError, match="bias_prob"):
        AugmentConfig(bias_prob=1.5)
    sampler = PatchSampler(AugmentConfig(patch=(16, 16, 16), pos_fraction=1.0, thick_slice_prob=1.0, bias_prob=1.0))
    s = sampler(case, 5)
    assert torch.all(s["image"][2] == 0) and torch.isfinite(s["image"]).all()  # the missing modality stays zero


def test_modality_dropout_draws_common_subsets():
    rng = np.random.default_rng(0)
    present = np.ones(4, np.float32)
    draws = [tuple(choose_subset(rng, present, 1.0, 0.5).astype(int)) for _ in range(2000)]
    assert all(sum(d) >= 1 for d in draws)
    flair_t1c, t1c_only = (0, 1, 0, 1), (0, 1, 0, 0)
    assert draws.count(flair_t1c) > 300 and draws.count(t1c_only) > 300  # ~25% + 1/15 of the rest each
    assert len(set(draws)) == 15
    no_flair = np.array([1, 1, 1, 0], np.float32)
    assert all(choose_subset(rng, no_flair, 1.0, 0.5)[3] == 0 for _ in range(200))
    assert choose_subset(rng, present, 0.0, 0.5).tolist() == [1, 1, 1, 1]


def test_network_inputs_zero_image_and_mask_channels():
    image = torch.ones(2, 4, 4, 4, 4)
    keep = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0]], dtype=torch.float32)
    x = network_inputs(image, keep)
    assert x.shape == (2, 8, 4, 4, 4)
    assert x[:, :4].mean(dim=(2, 3, 4)).tolist() == keep.tolist()
    assert x[:, 4:].mean(dim=(2, 3, 4)).tolist() == keep.tolist()


def test_sampler_extras_stay_aligned_with_the_patch():
    case = _cached_case()
    shape = case.seg.shape
    zz = (np.arange(shape[0]) // 4).astype(np.float32)[:, None, None] * np.ones(shape, np.float32)
    case.image[0] = zz.astype(np.float16)
    extras = {"full": (zz[None], 1), "coarse": (zz[None, ::4, ::4, ::4], 4)}
    sampler = PatchSampler(AugmentConfig(patch=(16, 16, 16), intensity_prob=0.0), extras=lambda name: extras)
    for seed in range(8):
        s = sampler(case, seed)
        full, coarse = s["extras"]["full"][0], s["extras"]["coarse"][0]
        assert coarse.shape == (4, 4, 4)
        torch.testing.assert_close(s["image"][0], full)
        torch.testing.assert_close(full[::4, ::4, ::4], coarse)
