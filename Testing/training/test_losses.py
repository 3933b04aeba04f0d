"""The distillation terms on tiny tensors with values checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from MTSSSegmenterLib.networks import NetOutput
from MTSSTrainingLib.losses import KDBatch, build_loss
from MTSSTrainingLib.losses.barlow import barlow_twins_loss
from MTSSTrainingLib.losses.functional import downsample_target
from MTSSTrainingLib.losses.region import agreed_background

S = (4, 4, 4)


def out(logits, features=None, aux=()):
    return NetOutput(logits, list(aux), dict(features or {}))


def batch(student, teachers, pops, order=None, weights=None, target=None, label_mask=None, experts=None,
          full_student=None):
    order = list(teachers) if order is None else order
    b = student.logits.shape[0]
    if weights is None:
        weights = torch.full((b, len(order)), 1.0 / max(len(order), 1))
    return KDBatch(student=student, teachers=teachers, populations=pops,
                   target=torch.zeros_like(student.logits) if target is None else target,
                   label_mask=torch.ones(b, 3) if label_mask is None else label_mask,
                   teacher_weights=weights, teacher_order=order, expert_regions=experts or {},
                   full_student=full_student)


def identity_heads(loss, channels, codes=None):
    with torch.no_grad():
        for code, head in loss.heads.items():
            if codes is not None and code not in codes:
                continue
            head.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1, 1))
            head.bias.zero_()


def binary_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


# ---------------------------------------------------------------- gt
def test_gt_matches_hand_computed_dice_and_bce():
    logits = torch.zeros(1, 3, *S)  # p = 0.5 everywhere
    target = torch.zeros(1, 3, *S)
    target[0, 0, :2] = 1  # WT: 32 of 64 voxels
    target[0, 1, 0, 0, :2] = 1  # TC: 2 voxels; ET empty
    loss = build_loss("gt", {}, {})(batch(out(logits), {}, ["GLI"], target=target))
    n = 64
    dice = [1 - (2 * 0.5 * k + 1e-5) / (0.5 * n + k + 1e-5) for k in (32, 2, 0)]
    expected = math.log(2) + sum(dice) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_gt_unlabelled_channel_gets_no_gradient_and_does_not_change_the_value():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, *S, requires_grad=True)
    aux = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    target = (torch.rand(2, 3, *S) > 0.5).float()
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])  # item 0 has no TC label
    gt = build_loss("gt", {}, {})
    value = gt(batch(out(logits, aux=[aux]), {}, ["MEN", "GLI"], target=target, label_mask=mask))
    value.backward()
    assert logits.grad[0, 1].abs().max() == 0 and aux.grad[0, 1].abs().max() == 0
    assert logits.grad[0, 0].abs().max() > 0 and logits.grad[1, 1].abs().max() > 0
    other = target.clone()
    other[0, 1] = 1 - other[0, 1]
    again = gt(batch(out(logits.detach(), aux=[aux.detach()]), {}, ["MEN", "GLI"], target=other, label_mask=mask))
    assert again.item() == pytest.approx(value.item(), rel=1e-6)


def test_gt_deep_supervision_weights_halve_and_are_normalised():
    torch.manual_seed(1)
    logits, aux1, aux2 = torch.randn(1, 3, *S), torch.randn(1, 3, 2, 2, 2), torch.randn(1, 3, 1, 1, 1)
    target = (torch.rand(1, 3, *S) > 0.5).float()
    gt = build_loss("gt", {}, {})
    mask = torch.ones(1, 3)
    levels = [gt.level(lg, target, mask).item() for lg in (logits, aux1, aux2)]
    value = gt(batch(out(logits, aux=[aux1, aux2]), {}, ["GLI"], target=target)).item()
    assert value == pytest.approx((levels[0] + 0.5 * levels[1] + 0.25 * levels[2]) / 1.75, rel=1e-6)


def test_gt_adds_the_full_modality_student():
    torch.manual_seed(2)
    target = (torch.rand(1, 3, *S) > 0.5).float()
    a, b = torch.randn(1, 3, *S), torch.randn(1, 3, *S)
    gt = build_loss("gt", {}, {}, full_student_weight=0.5)
    alone = gt(batch(out(a), {}, ["GLI"], target=target)).item()
    full = gt(batch(out(b), {}, ["GLI"], target=target)).item()
    both = gt(batch(out(a), {}, ["GLI"], target=target, full_student=out(b))).item()
    assert both == pytest.approx(alone + 0.5 * full, rel=1e-6)


def test_downsample_target_maxpool_keeps_small_lesions_nearest_samples():
    t = torch.zeros(1, 1, 4, 4, 4)
    t[0, 0, 0, 0, 0] = 1
    assert downsample_target(t, (2, 2, 2), "maxpool")[0, 0, 0, 0, 0] == 1
    assert downsample_target(t, (2, 2, 2), "nearest").sum() == 0


# ---------------------------------------------------------------- output
def test_output_kd_hand_computed_with_temperature():
    student = out(torch.zeros(1, 3, *S))
    teacher = out(torch.full((1, 3, *S), 2.0))
    value = build_loss("output", {}, {}, temperature=2.0)(batch(student, {"GLI": teacher}, ["GLI"]))
    p = 1 / (1 + math.exp(-1.0))  # sigmoid(2 / T)
    assert value.item() == pytest.approx(4 * binary_kl(p, 0.5), rel=1e-5)


def test_output_kd_mixes_teacher_probabilities_with_the_weights():
    student = out(torch.zeros(1, 3, *S))
    teachers = {"GLI": out(torch.full((1, 3, *S), 20.0)), "PED": out(torch.full((1, 3, *S), -20.0))}
    value = build_loss("output", {}, {}, temperature=1.0)(
        batch(student, teachers, ["GLI"], weights=torch.tensor([[0.75, 0.25]])))
    assert value.item() == pytest.approx(binary_kl(0.75, 0.5), rel=1e-4)


def test_output_kd_zero_when_student_equals_every_teacher():
    torch.manual_seed(3)
    z = torch.randn(2, 3, *S)
    teachers = {"GLI": out(z.clone()), "PED": out(z.clone())}
    value = build_loss("output", {}, {})(batch(out(z), teachers, ["GLI", "PED"]))
    assert abs(value.item()) < 1e-6


def test_output_kd_ignores_channels_a_teacher_has_no_labels_for():
    torch.manual_seed(4)
    z = torch.randn(1, 3, *S)
    wt_only = z.clone()
    wt_only[:, 1:] = 10 * torch.randn(1, 2, *S)  # untrained TC/ET heads: noise
    teachers = {"GLI": out(z.clone()), "MEN": out(wt_only)}
    b = batch(out(z), teachers, ["MEN"], experts={"MEN": (True, False, False)})
    assert abs(build_loss("output", {}, {})(b).item()) < 1e-6
    assert build_loss("output", {}, {}, respect_experts=False)(b).item() > 0.1


# ---------------------------------------------------------------- latent
def test_latent_zero_with_identity_projection_and_grows_with_the_difference():
    torch.manual_seed(5)
    f = torch.randn(2, 4, 2, 2, 2)
    latent = build_loss("latent", {"bottleneck": 4}, {"GLI": {"bottleneck": 4}})
    identity_heads(latent, 4)
    same = batch(out(torch.zeros(2, 3, *S), {"bottleneck": f}), {"GLI": out(torch.zeros(2, 3, *S), {"bottleneck": f})},
                 ["GLI", "GLI"])
    assert abs(latent(same).item()) < 1e-6
    other = batch(out(torch.zeros(2, 3, *S), {"bottleneck": f}),
                  {"GLI": out(torch.zeros(2, 3, *S), {"bottleneck": torch.randn(2, 4, 2, 2, 2)})}, ["GLI", "GLI"])
    assert latent(other).item() > 0.5


def test_latent_resamples_to_teacher_grid_and_is_linear_in_teacher_weights():
    torch.manual_seed(6)
    f = torch.randn(1, 4, 2, 2, 2)
    up = torch.nn.functional.interpolate(f, size=(4, 4, 4), mode="trilinear", align_corners=False)
    teachers = {"GLI": out(torch.zeros(1, 3, *S), {"bottleneck": up}),
                "PED": out(torch.zeros(1, 3, *S), {"bottleneck": torch.randn(1, 6, 4, 4, 4)})}
    latent = build_loss("latent", {"bottleneck": 4}, {"GLI": {"bottleneck": 4}, "PED": {"bottleneck": 6}})
    identity_heads(latent, 4, ["GLI"])

    def value(w):
        return latent(batch(out(torch.zeros(1, 3, *S), {"bottleneck": f}), teachers, ["GLI"],
                            weights=torch.tensor([w]))).item()

    assert abs(value([1.0, 0.0])) < 1e-6
    assert value([0.0, 1.0]) > 0.5
    assert value([0.3, 0.7]) == pytest.approx(0.3 * value([1.0, 0.0]) + 0.7 * value([0.0, 1.0]), rel=1e-5)


# ---------------------------------------------------------------- barlow
def test_barlow_twins_hand_computed_and_identical_inputs():
    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])  # standardised, uncorrelated
    swapped = z[:, [1, 0]]  # C = [[0, 1], [1, 0]]
    scale = 1 / (1 + 1e-5)
    assert barlow_twins_loss(z, swapped, lambd=0.5).item() == pytest.approx(2 + 0.5 * 2 * scale**2, rel=1e-5)
    assert barlow_twins_loss(z, z, lambd=0.5).item() == pytest.approx(2 * (1 - scale) ** 2, abs=1e-8)
    torch.manual_seed(7)
    a, b = torch.randn(64, 8), torch.randn(64, 8)
    diagonal_same = barlow_twins_loss(a, a, lambd=0.0).item()
    assert diagonal_same < 1e-6
    assert barlow_twins_loss(a, b).item() > barlow_twins_loss(a, a).item() + 1.0


def test_barlow_module_teacher_then_full_student_then_nothing():
    torch.manual_seed(8)
    f = torch.randn(2, 4, 2, 2, 2)
    barlow = build_loss("barlow", {"bottleneck": 4}, {"GLI": {"bottleneck": 4}}, normalize=False)
    identity_heads(barlow, 4)
    logits = torch.zeros(2, 3, *S)
    same = barlow(batch(out(logits, {"bottleneck": f}), {"GLI": out(logits, {"bottleneck": f})}, ["GLI", "GLI"]))
    rand = barlow(batch(out(logits, {"bottleneck": f}), {"GLI": out(logits, {"bottleneck": torch.randn(2, 4, 2, 2, 2)})},
                        ["GLI", "GLI"]))
    assert same.item() < 0.05 < rand.item()
    # No GLI teacher for a PED case: the student's own full-modality bottleneck is the reference.
    full = torch.randn(2, 4, 2, 2, 2, requires_grad=True)
    student = torch.randn(2, 4, 2, 2, 2, requires_grad=True)
    b = batch(out(logits, {"bottleneck": student}), {}, ["PED", "PED"], full_student=out(logits, {"bottleneck": full}))
    value = barlow(b)
    expected = barlow_twins_loss(student.detach().movedim(1, -1).reshape(-1, 4), full.detach().movedim(1, -1).reshape(-1, 4))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert full.grad is None and student.grad.abs().sum() > 0
    none = barlow(batch(out(logits, {"bottleneck": f}), {}, ["PED", "PED"]))
    assert none.item() == 0.0


# ---------------------------------------------------------------- region
def _region_setup():
    """GLI teacher (all labels) and a whole-tumour-only MEN teacher whose TC/ET heads are noise."""
    torch.manual_seed(9)
    gli = torch.randn(2, 3, *S) * 3
    men = torch.randn(2, 3, *S) * 3
    logits = torch.randn(2, 3, *S, requires_grad=True)
    feats = {"dec0": torch.randn(2, 4, *S)}
    teachers = {"GLI": out(gli, {"dec0": torch.randn(2, 4, *S)}), "MEN": out(men, {"dec0": torch.randn(2, 4, *S)})}
    b = batch(out(logits, feats), teachers, ["GLI", "MEN"], experts={"MEN": (True, False, False)})
    return b, logits, gli, men


def test_region_whole_tumour_only_teacher_says_nothing_about_tc_et_on_positive_voxels():
    b, logits, _, men = _region_setup()
    region = build_loss("region", {"dec0": 4}, {"GLI": {"dec0": 4}, "MEN": {"dec0": 4}})
    total, _, _ = region.teacher_terms(b)["MEN"]
    total.backward()
    positive = torch.sigmoid(men[:, 0]) >= 0.5  # not background for the MEN teacher
    grad = logits.grad
    assert grad[:, 1:][positive[:, None].expand(-1, 2, *S)].abs().max() == 0
    assert grad[1, 0][positive[1]].abs().min() > 0  # its expert region (WT on MEN cases) is supervised
    # The whole objective term too: no TC/ET supervision on the MEN case where MEN sees tumour.
    logits.grad = None
    region(b).backward()
    assert logits.grad[1, 1:][positive[1][None].expand(2, *S)].abs().max() == 0
    # Its untrained TC/ET outputs do not matter at all.
    before = region(b).item()
    b.teachers["MEN"].logits[:, 1:] = 100 * torch.randn(2, 2, *S)
    assert region(b).item() == pytest.approx(before, rel=1e-6)


def test_region_agreed_background_hand_made():
    z = torch.full((1, 3, 1, 1, 2), -5.0)
    gli, men = z.clone(), z.clone()
    gli[0, 2, 0, 0, 1] = 5.0  # GLI sees ET in voxel 1
    men[0, 0, 0, 0, 0] = 5.0  # MEN (WT only) sees WT in voxel 0: its vote blocks WT, TC and ET there
    b = KDBatch(out(torch.zeros_like(z)), {"GLI": out(gli), "MEN": out(men)}, ["PED"], torch.zeros_like(z),
                torch.ones(1, 3), torch.full((1, 2), 0.5), ["GLI", "MEN"], {"MEN": (True, False, False)})
    agree = agreed_background(b)[0, :, 0, 0]
    assert agree.tolist() == [[False, True], [False, True], [False, False]]


def test_region_hand_computed_expert_value_and_zero_when_equal():
    teacher = torch.full((1, 3, *S), math.log(3.0))  # p = 0.75
    region = build_loss("region", {"dec0": 4}, {"GLI": {"dec0": 4}}, feature_weight=0.0)
    value = region(batch(out(torch.zeros(1, 3, *S)), {"GLI": out(teacher)}, ["GLI"]))
    assert value.item() == pytest.approx(binary_kl(0.75, 0.5), rel=1e-5)
    f = torch.randn(1, 4, *S)
    region = build_loss("region", {"dec0": 4}, {"GLI": {"dec0": 4}})
    identity_heads(region, 4)
    same = region(batch(out(teacher.clone(), {"dec0": f}), {"GLI": out(teacher, {"dec0": f.clone()})}, ["GLI"]))
    assert abs(same.item()) < 1e-5


# ---------------------------------------------------------------- attention
def test_attention_hand_computed_and_zero_when_equal():
    a = torch.tensor([1.0, 0.0]).view(1, 1, 1, 1, 2)
    b = torch.tensor([0.0, 1.0]).view(1, 1, 1, 1, 2)
    logits = torch.zeros(1, 3, 1, 1, 2)
    att = build_loss("attention", {"bottleneck": 1, "dec0": 1}, {})
    value = att(batch(out(logits, {"bottleneck": a, "dec0": a}), {"GLI": out(logits, {"bottleneck": b, "dec0": b})},
                      ["GLI"]))
    assert value.item() == pytest.approx(4.0)  # |[1,0]-[0,1]|^2 = 2 for each of the two maps
    torch.manual_seed(10)
    f, g = torch.randn(2, 4, 2, 2, 2), torch.randn(2, 5, *S)
    up = f.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)  # teacher at twice the grid
    z = torch.zeros(2, 3, *S)
    equal = att(batch(out(z, {"bottleneck": f, "dec0": g}), {"GLI": out(z, {"bottleneck": up, "dec0": g.clone()})},
                      ["GLI", "GLI"]))
    assert abs(equal.item()) < 1e-6


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("term", ["output", "latent", "barlow", "region", "attention"])
def test_gradients_reach_student_and_heads_never_teachers(term):
    torch.manual_seed(11)
    channels = {"bottleneck": 4, "dec0": 4}
    logits = torch.randn(2, 3, *S, requires_grad=True)
    feats = {k: torch.randn(2, 4, *(S if k == "dec0" else (2, 2, 2)), requires_grad=True) for k in channels}
    t_logits = torch.randn(2, 3, *S, requires_grad=True)
    t_feats = {k: torch.randn(2, 4, *(S if k == "dec0" else (2, 2, 2)), requires_grad=True) for k in channels}
    loss = build_loss(term, channels, {"GLI": channels})
    value = loss(batch(out(logits, feats), {"GLI": out(t_logits, t_feats)}, ["GLI", "GLI"]))
    value.backward()
    student_grads = [logits.grad, *(f.grad for f in feats.values())]
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads)
    assert t_logits.grad is None and all(f.grad is None for f in t_feats.values())
    for name, p in loss.named_parameters():
        assert p.grad is not None, name  # in the graph (DDP needs every parameter used)
        if "_full" not in name:  # Barlow's self-distillation head is idle when a teacher is there
            assert p.grad.abs().sum() > 0, name
