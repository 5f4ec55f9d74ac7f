"""The learning-rate rules (Eq. 4 and the linear rule), the schedule and the parameter groups."""

import math

import pytest
import torch
from torch import nn

from dmjd.engine.optim import effective_lr, lr_at, param_groups


def test_dmjd_rule_matches_eq4():
    # Paper: b_u = 512 unique images (1024 views with K=2), m_pred 1.0, m_corr 0.6, blr 1.5e-4.
    assert effective_lr(1.5e-4, 512, 2, 0.6, 1.0, "dmjd") == pytest.approx(1.5e-4 * 512 * (1.0 / 0.6) / 256)
    assert effective_lr(1.5e-4, 512, 2, 0.6, 1.0, "dmjd") == pytest.approx(5e-4)


def test_official_code_formula_agrees():
    # Official code: blr * (batch * accum * world * pred_ratio / mask_ratio) / 256 with 64 x 1 x 8.
    assert effective_lr(6e-4, 64 * 8, 2, 0.6, 1.0, "dmjd") == pytest.approx(6e-4 * 512 * 1.0 / 0.6 / 256)


def test_linear_rule_counts_views_and_reduces_to_mae_for_one_view():
    assert effective_lr(1.5e-4, 4096, 1, 0.75, 0.75, "linear") == pytest.approx(2.4e-3)  # MAE's 4096 batch
    assert effective_lr(1.5e-4, 512, 2, 0.6, 1.0, "linear") == pytest.approx(1.5e-4 * 1024 / 256)
    # With K = 1 and m_pred = m_corr both rules agree.
    assert effective_lr(1e-4, 256, 1, 0.75, 0.75, "dmjd") == effective_lr(1e-4, 256, 1, 0.75, 0.75, "linear")
    with pytest.raises(ValueError):
        effective_lr(1e-4, 256, 1, 0.75, 0.75, "sqrt")


def test_warmup_then_half_cycle_cosine():
    peak, total, warm = 1.0, 100, 10
    assert lr_at(0, total, warm, peak) == 0.0
    assert lr_at(5, total, warm, peak) == pytest.approx(0.5)
    assert lr_at(10, total, warm, peak) == pytest.approx(1.0)
    assert lr_at(55, total, warm, peak) == pytest.approx(0.5)
    assert lr_at(100, total, warm, peak, min_lr=0.1) == pytest.approx(0.1)
    mid = 10 + 90 / 3
    assert lr_at(mid, total, warm, peak) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    assert lr_at(3, 100, 0, peak) < 1.0  # no warmup starts at the peak and decays


def test_param_groups_exclude_bias_norm_and_named_tokens():
    model = nn.ModuleDict({"lin": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
    model.register_parameter("pos_embed", nn.Parameter(torch.zeros(1, 3, 4)))
    model.register_parameter("frozen", nn.Parameter(torch.zeros(2, 2), requires_grad=False))
    decay, plain = param_groups(model.named_parameters(), 0.05, {"pos_embed"})
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(plain["params"]) == 4  # lin.bias, norm.weight, norm.bias, pos_embed; frozen left out
