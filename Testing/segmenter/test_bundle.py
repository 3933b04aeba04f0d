"""Bundles: round trip, checksum, no pickles, clear messages, search order."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from MTSSSegmenterLib.bundle import (find_bundle, install_bundle, list_bundles, load_bundle, read_meta,
                                     user_model_dir)
from MTSSSegmenterLib.errors import BundleError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_roundtrip_gives_identical_weights(tiny_bundle):
    b = load_bundle(tiny_bundle)
    again = load_bundle(tiny_bundle)
    for (k, v), (_, w) in zip(b.network.state_dict().items(), again.network.state_dict().items()):
        assert torch.equal(v, w), k
    assert b.meta["weights_sha256"] and b.supports(["t1c", "t2f"]) and not b.supports([])
    assert "any non-empty subset" in b.card()
    from MTSSSegmenterLib.io import new_file_mode

    for name in ("model.json", "model.safetensors"):  # shareable like any file the user writes
        assert (tiny_bundle / name).stat().st_mode & 0o777 == new_file_mode(), name


def test_tampered_weights_fail_the_checksum(tiny_bundle, tmp_path):
    bad = _copy(tiny_bundle, tmp_path / "bad")
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the checksum"):
        load_bundle(bad)


def test_missing_file_and_pickle_are_refused(tiny_bundle, tmp_path):
    bad = _copy(tiny_bundle, tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, bad / "model.pt")
    with pytest.raises(BundleError, match="lacks model.safetensors.*pickled checkpoints are never loaded"):
        load_bundle(bad)


def test_broken_json_and_wrong_format(tiny_bundle, tmp_path):
    bad = _copy(tiny_bundle, tmp_path / "bad")
    (bad / "model.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_meta(bad)
    meta = json.loads((tiny_bundle / "model.json").read_text())
    meta["format_version"] = 99
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        read_meta(bad)


def test_weights_not_fitting_the_config(tiny_bundle, tmp_path):
    bad = _copy(tiny_bundle, tmp_path / "bad")
    meta = json.loads((bad / "model.json").read_text())
    meta["network"]["channels"] = [8, 16, 32]
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not fit the network"):
        load_bundle(bad)


def test_search_order_user_folder_then_package(tiny_bundle, monkeypatch, tmp_path):
    import MTSSSegmenterLib.bundle as B

    monkeypatch.setattr(B, "PACKAGE_DATA", tmp_path / "pkg")
    with pytest.raises(BundleError, match="No default model is installed"):
        find_bundle()
    _copy(tiny_bundle, tmp_path / "pkg" / "default")
    assert find_bundle() == tmp_path / "pkg" / "default"
    installed = install_bundle(tiny_bundle, "default")
    assert installed == user_model_dir() / "default" and find_bundle() == installed
    assert find_bundle("default") == installed
    assert installed in list_bundles()
    with pytest.raises(BundleError, match="No model bundle named 'nope'"):
        find_bundle("nope")


def _calibrated_meta(thick: bool = False) -> dict:
    """Validation figures as calibration records them (whole-tumour Dice per input set)."""
    record = {"dice": {"WT": 0.8}, "subsets": {"t1c": {"dice": {"WT": 0.5}}, "t1c,t2f": {"dice": {"WT": 0.78}},
                                               "t1n,t1c": {"dice": {"WT": 0.55}}, "t1c,t2w": {"dice": {"WT": 0.6}},
                                               "t1n,t1c,t2w": {"dice": {"WT": 0.65}}}}
    return {"metrics": {"thick_slice_calibration" if thick else "calibration": record}}


def test_weak_inputs_get_a_warning_naming_the_series_that_helps_most():
    from MTSSSegmenterLib.bundle import weak_inputs_warning

    text = weak_inputs_warning(_calibrated_meta(), ["t1c"])
    assert text is not None and "t1c alone" in text and "0.50" in text and "0.80" in text
    assert "adding the FLAIR series (t1c+t2f: 0.78) helps most" in text
    assert weak_inputs_warning(_calibrated_meta(), ["t2f", "t1c"]) is None  # 0.78: within 0.1 of all four
    assert weak_inputs_warning(_calibrated_meta(), ["t1n", "t1c", "t2w", "t2f"]) is None
    assert "(all four: 0.80)" in weak_inputs_warning(_calibrated_meta(), ["t1n", "t1c", "t2w"])
    # thick slices: the figures of the thick-slice calibration, and only those
    assert weak_inputs_warning(_calibrated_meta(), ["t1c"], thick=True) is None
    assert "clinical studies with thick slices" in weak_inputs_warning(_calibrated_meta(thick=True), ["t1c"], True)
    assert weak_inputs_warning({}, ["t1c"]) is None  # a bundle without validation figures: nothing to say


def test_the_pipeline_passes_the_warning_on(tiny_bundle, tmp_path):
    from MTSSSegmenterLib.pipeline import segment

    from ..conftest import make_volume

    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["metrics"] = _calibrated_meta()["metrics"]
    (folder / "model.json").write_text(json.dumps(meta))
    alone = segment({"t1c": make_volume(seed=1)}, model=folder, device="cpu")
    assert [w for w in alone.warnings if w.startswith("From t1c alone")]
    both = segment({"t1c": make_volume(seed=1), "t2f": make_volume(seed=3)}, model=folder, device="cpu")
    assert not [w for w in both.warnings if "alone" in w]
