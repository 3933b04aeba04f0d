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
