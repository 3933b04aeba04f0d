"""The plain-torch residual U-Net blocks are MONAI's DynUNet blocks parameter for parameter."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from MTSSSegmenterLib.netconfig import NetworkConfig
from MTSSSegmenterLib.networks import ResUNet

CONFIG = {"kind": "resunet", "channels": [4, 8, 16], "deep_supervision": 1, "norm": "instance", "dropout": 0.0}


def _pair() -> tuple[ResUNet, ResUNet]:
    config = NetworkConfig.from_dict(CONFIG)
    torch.manual_seed(3)
    ours = ResUNet(config, use_monai=False)
    torch.manual_seed(3)
    theirs = ResUNet(config, use_monai=True)
    return ours, theirs


def test_same_parameters_in_the_same_order_and_the_same_initialisation():
    ours, theirs = _pair()
    a, b = list(ours.state_dict().items()), list(theirs.state_dict().items())
    assert [k for k, _ in a] == [k for k, _ in b]  # optimizer states of old checkpoints line up too
    for (k, x), (_, y) in zip(a, b):
        assert x.shape == y.shape and torch.equal(x, y), k


def test_same_outputs_and_gradients():
    ours, theirs = _pair()
    x = torch.randn(2, 8, 16, 24, 16)
    out_a, out_b = ours.forward_features(x), theirs.forward_features(x)
    torch.testing.assert_close(out_a.logits, out_b.logits)
    assert len(out_a.aux_logits) == len(out_b.aux_logits) == 1
    torch.testing.assert_close(out_a.aux_logits[0], out_b.aux_logits[0])
    assert out_a.features.keys() == out_b.features.keys()
    out_a.logits.square().mean().backward()
    out_b.logits.square().mean().backward()
    for (k, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=k)


def test_monai_blocks_where_the_config_needs_them():
    net = ResUNet(NetworkConfig.from_dict({**CONFIG, "dropout": 0.2}))
    assert type(net.encoders[0]).__module__.startswith("monai")
    assert type(ResUNet(NetworkConfig.from_dict(CONFIG)).encoders[0]).__module__ == "MTSSSegmenterLib.blocks"


@pytest.mark.slow
def test_segmenting_with_the_default_bundle_never_imports_monai(tmp_path):
    code = ("import sys\nfrom MTSSSegmenterLib import cli\n"
            "rc = cli.main(['segment', str(cli.SAMPLE_DIR), '-o', sys.argv[1], '--device', 'cpu'])\n"
            "print(rc, 'monai' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "seg.nii.gz")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "0 False" and (tmp_path / "seg.nii.gz").is_file()
