"""Registry, weighted objective and population-aware teacher weights."""

from __future__ import annotations

import math

import pytest
import torch

from MTSSSegmenterLib.networks import NetOutput, NetworkConfig, build_network
from MTSSTrainingLib.losses import (KDBatch, KDLoss, available_losses, build_loss, build_objective,
                                    population_weights, register_loss)
from MTSSTrainingLib.losses import registry

TERMS = ["attention", "barlow", "gt", "latent", "output", "region"]


# ---------------------------------------------------------------- registry
def test_registry_lists_terms_and_suggests_the_near_match():
    assert set(TERMS) <= set(available_losses())
    with pytest.raises(ValueError) as err:
        build_loss("outptu", {}, {})
    msg = str(err.value)
    assert msg.startswith("Unknown KD term 'outptu'. Did you mean 'output'? Known: attention, barlow, gt, latent")
    with pytest.raises(ValueError, match="does not take \\['temprature'\\]; it takes: temperature"):
        build_loss("output", {}, {}, temprature=2.0)


def test_register_loss_adds_a_term_and_refuses_a_clash():
    try:
        @register_loss("constant_test")
        class Constant(KDLoss):
            """A term returning 3 (test only)."""

            def forward(self, batch):
                return batch.student.logits.sum() * 0 + 3.0

        assert "constant_test" in available_losses() and Constant.name == "constant_test"
        with pytest.raises(ValueError, match="already registered"):
            @register_loss("output")
            class Other(KDLoss):
                pass
    finally:
        registry._REGISTRY.pop("constant_test", None)


# ---------------------------------------------------------------- objective
def _tiny_batch(seed=0):
    torch.manual_seed(seed)
    s = (4, 4, 4)

    def net_out(grad):
        return NetOutput(torch.randn(2, 3, *s, requires_grad=grad), [],
                         {"bottleneck": torch.randn(2, 4, 2, 2, 2, requires_grad=grad),
                          "dec0": torch.randn(2, 4, *s, requires_grad=grad)})

    return KDBatch(student=net_out(True), teachers={"GLI": net_out(True), "MEN": net_out(True)},
                   populations=["GLI", "MEN"], target=(torch.rand(2, 3, *s) > 0.5).float(),
                   label_mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
                   teacher_weights=torch.tensor([[0.7, 0.3], [0.3, 0.7]]), teacher_order=["GLI", "MEN"],
                   expert_regions={"GLI": (True, True, True), "MEN": (True, False, False)})


CH = {"bottleneck": 4, "dec0": 4}
TEACH = {"GLI": CH, "MEN": CH}


def test_objective_str_and_total_is_the_weighted_sum():
    obj = build_objective(["output", "latent"], {"output": 0.5, "latent": 0.1}, CH, TEACH, temperature=2.0)
    assert str(obj) == "1.0*gt + 0.5*output(T=2.0) + 0.1*latent"
    full = build_objective("output,latent,barlow,region,attention", {"gt": 2.0}, CH, TEACH)
    b = _tiny_batch()
    total, parts = full(b)
    assert list(parts) == ["gt", "output", "latent", "barlow", "region", "attention"]
    assert all(v > 0 and math.isfinite(v) for v in parts.values())
    assert total.item() == pytest.approx(sum(full.weights[k] * v for k, v in parts.items()), rel=1e-6)
    assert full.weights["gt"] == 2.0 and full.weights["output"] == 1.0
    total.backward()
    assert b.student.logits.grad is not None and b.teachers["GLI"].logits.grad is None
    assert all(p.grad is not None for p in full.parameters())


def test_objective_options_and_mistakes():
    obj = build_objective([], None, CH, TEACH)
    assert str(obj) == "1.0*gt"
    per_term = build_objective(["output", "barlow"], None, CH, TEACH, output={"temperature": 4.0}, lambd=0.01)
    assert "output(T=4.0)" in str(per_term) and "barlow(lambda=0.01)" in str(per_term)
    with pytest.raises(ValueError, match="not selected"):
        build_objective(["output"], {"latent": 0.1}, CH, TEACH)
    with pytest.raises(ValueError, match="No KD term among .* takes option 'temprature'"):
        build_objective(["output"], None, CH, TEACH, temprature=2.0)
    with pytest.raises(ValueError, match="Did you mean 'latent'"):
        build_objective(["latnet"], None, CH, TEACH)
    with pytest.raises(ValueError, match="finite number >= 0"):
        obj.set_weight("gt", -1.0)
    off = build_objective(["output"], {"output": 0.0}, CH, TEACH)
    total, parts = off(_tiny_batch())
    assert parts["output"] == 0.0 and total.item() == pytest.approx(parts["gt"])


def test_kdbatch_rejects_inconsistent_fields_by_name():
    b = _tiny_batch()
    with pytest.raises(ValueError, match="teacher_order names \\['PED'\\]"):
        KDBatch(b.student, b.teachers, b.populations, b.target, b.label_mask, torch.ones(2, 1), ["PED"], {})
    with pytest.raises(ValueError, match="3 population codes for a batch of 2"):
        KDBatch(b.student, b.teachers, ["GLI"] * 3, b.target, b.label_mask, b.teacher_weights, b.teacher_order, {})


def test_missing_teacher_features_are_reported():
    b = _tiny_batch()
    b.teachers["GLI"].features.clear()
    with pytest.raises(ValueError, match="teacher 'GLI' output has no feature 'bottleneck'"):
        build_loss("latent", CH, TEACH)(b)


def test_objective_trains_real_networks_of_different_kinds():
    torch.manual_seed(0)
    student = build_network(NetworkConfig(channels=(4, 8, 16), deep_supervision=1))
    teachers = {"GLI": build_network(NetworkConfig(channels=(4, 8, 16, 32), deep_supervision=0)),
                "MEN": build_network(NetworkConfig(kind="segresnet", channels=(8,), extra={"blocks_down": (1, 1, 1)}))}
    obj = build_objective(["output", "latent", "barlow", "region", "attention"], None, student.feature_channels,
                          {c: t.feature_channels for c, t in teachers.items()})
    x = torch.randn(2, 8, 16, 16, 16)
    with torch.no_grad():
        t_out = {c: t.forward_features(x) for c, t in teachers.items()}
    pops = ["GLI", "MEN"]
    b = KDBatch(student.forward_features(x), t_out, pops, (torch.rand(2, 3, 16, 16, 16) > 0.8).float(),
                torch.ones(2, 3), population_weights(pops, ["GLI", "MEN"], None), ["GLI", "MEN"],
                {"MEN": (True, False, False)})
    total, parts = obj(b)
    total.backward()
    assert math.isfinite(total.item()) and set(parts) == set(TERMS)
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for t in teachers.values() for p in t.parameters())


# ---------------------------------------------------------------- population weights
ORDER = ["GLI", "PED", "MEN"]
DICE = {"GLI": {"GLI": 0.9, "PED": 0.7, "MET": 0.5},
        "PED": {"GLI": 0.8, "PED": 0.9, "MET": 0.6},
        "MEN": {"GLI": 0.6, "PED": 0.5, "MET": 0.8}}


def test_soft_weights_own_teacher_then_dice_softmax():
    w = population_weights(["GLI", "MET"], ORDER, DICE, "soft", own_weight=0.7, temperature=0.1)
    e = math.exp(2.0)  # PED and MEN on GLI: 0.8 vs 0.6 -> softmax([8, 6])
    assert w[0].tolist() == pytest.approx([0.7, 0.3 * e / (e + 1), 0.3 / (e + 1)], rel=1e-6)
    z = [math.exp(5.0), math.exp(6.0), math.exp(8.0)]  # MET has no teacher: all mass by Dice
    assert w[1].tolist() == pytest.approx([v / sum(z) for v in z], rel=1e-6)
    assert torch.allclose(w.sum(1), torch.ones(2))


def test_soft_weights_without_dice_are_uniform_over_the_others():
    w = population_weights(["PED", "SSA"], ORDER, None)
    assert w[0].tolist() == pytest.approx([0.15, 0.7, 0.15])
    assert w[1].tolist() == pytest.approx([1 / 3] * 3)
    assert population_weights(["GLI"], ["GLI"], None).tolist() == [[1.0]]


def test_hard_weights_are_one_hot():
    w = population_weights(["MEN", "MET", "SSA"], ORDER, DICE, "hard")
    assert w[0].tolist() == [0, 0, 1] and w[1].tolist() == [0, 0, 1]  # MET: MEN teacher has the best Dice
    assert w[2].tolist() == pytest.approx([1 / 3] * 3)  # SSA: no teacher, no Dice -> uniform


def test_missing_dice_entry_falls_back_to_uniform_with_a_warning(caplog):
    partial = {"GLI": {"GLI": 0.9}, "PED": {"PED": 0.9}, "MEN": {"PED": 0.5}}  # GLI on PED unknown
    w = population_weights(["PED"], ORDER, partial)
    assert w[0].tolist() == pytest.approx([0.15, 0.7, 0.15])
    assert "No validation Dice of teacher" in caplog.text


def test_weighting_mistakes_are_named():
    with pytest.raises(ValueError, match="Did you mean 'soft'"):
        population_weights(["GLI"], ORDER, None, "sotf")
    with pytest.raises(ValueError, match="own_weight must be in \\[0, 1\\], got 1.5"):
        population_weights(["GLI"], ORDER, None, own_weight=1.5)
    with pytest.raises(ValueError, match="duplicate"):
        population_weights(["GLI"], ["GLI", "GLI"], None)
