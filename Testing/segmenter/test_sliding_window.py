"""The plain-torch sliding window: exact for voxel-wise networks, MONAI's result for others."""

from __future__ import annotations

import pytest
import torch
from MTSSSegmenterLib.inference import _starts, sliding_window


def test_window_starts_cover_the_axis_and_end_flush():
    assert _starts(100, 40, 0.25) == [0, 30, 60]
    assert _starts(40, 64, 0.25) == [0]
    for size, roi in ((97, 32), (33, 32), (128, 64)):
        starts = _starts(size, roi, 0.5)
        assert starts[0] == 0 and starts[-1] == size - roi
        assert all(b - a <= roi for a, b in zip(starts, starts[1:]))


def test_voxelwise_network_gives_the_whole_volume_pass():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 1)
    x = torch.randn(1, 2, 37, 50, 29)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window(x, (16, 24, 16), net, 0.25, batch=3), net(x))


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_monai_gaussian_sliding_window(batch):
    monai_inferers = pytest.importorskip("monai.inferers")
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 3, padding=1))
    x = torch.randn(2, 2, 40, 36, 30)
    with torch.no_grad():
        ours = sliding_window(x, (16, 16, 16), net, 0.25, batch=batch)
        theirs = monai_inferers.sliding_window_inference(x, (16, 16, 16), batch, net, overlap=0.25, mode="gaussian")
    # Same windows, Gaussian weights of the same sigma (MONAI builds its kernel slightly differently).
    assert (ours - theirs).abs().max() < 0.02 * theirs.abs().max()


def test_mirror_flips_are_every_combination_identity_first():
    from MTSSSegmenterLib.errors import InputError
    from MTSSSegmenterLib.inference import mirror_flips

    assert mirror_flips(()) == [()]
    assert mirror_flips([2]) == [(), (2,)]
    assert sorted(mirror_flips([0, 2])) == sorted([(), (0,), (2,), (0, 2)])
    with pytest.raises(InputError, match="not a spatial axis"):
        mirror_flips([3])


@pytest.mark.parametrize("roi", [(64, 64, 64), (16, 16, 16)])  # one pass, and a sliding window
def test_mirrored_prediction_averages_the_logits_of_the_flipped_inputs(roi):
    from MTSSSegmenterLib.inference import predict

    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 3, padding=1))
    x = torch.randn(1, 2, 32, 32, 32)
    plain, _, _ = predict(net, x, roi, device="cpu", divisor=16)
    mirrored, _, _ = predict(net, x, roi, device="cpu", divisor=16, mirror=[2])
    flipped, _, _ = predict(net, torch.flip(x, [4]), roi, device="cpu", divisor=16)
    expected = torch.sigmoid((torch.logit(plain) + torch.flip(torch.logit(flipped), [4])) / 2)
    torch.testing.assert_close(mirrored, expected, atol=1e-4, rtol=1e-4)
    assert (mirrored - plain).abs().max() > 1e-3  # this network is not mirror-symmetric: it changed something
