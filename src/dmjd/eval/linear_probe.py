"""Linear probing of frozen features: the MAE protocol, and a fast logistic-regression probe.

MAE protocol: a BatchNorm without affine parameters (it only whitens the features, so the probe
stays linear) followed by a linear head initialised with std 0.01, trained with SGD or LARS,
per-iteration warmup + half-cycle cosine, ``lr = blr * batch / 256``. The encoder is frozen and
the probe runs on cached features of centre-cropped images, so no augmentation is applied (MAE
uses random-resized crops on ImageNet; on small data sets cached features are the usual choice).

SGD is the default: LARS scales every step to ``lr * 0.001 * |w|``, which MAE's batch of 16,384
(lr 6.4) makes large enough; at a batch of 256 (lr 0.1) the head barely moves. For MAE's exact
ImageNet protocol use ``optimizer="lars", batch_size=16384``.

Fast probes: multinomial logistic regression on standardised features, for small data and for
monitoring during pre-training. ``logistic_regression_top1`` uses scikit-learn (CPU, run to
convergence; ``dmjd linprobe --fast``); ``torch_logistic_regression_top1`` minimises the same
objective full-batch with L-BFGS on the features' device and a fixed iteration budget, so the online
monitor costs milliseconds on a GPU instead of tens of seconds of CPU solver time.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import Tensor, nn

from dmjd.engine.optim import lr_at, set_lr
from dmjd.eval.settings import ProbeSettings


class LinearProbeHead(nn.Sequential):
    """``BatchNorm1d(affine=False, eps=1e-6)`` then ``Linear(dim, num_classes)`` (weights ~ N(0, 0.01))."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
        linear = cast(nn.Linear, self[1])
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)


def build_optimizer(head: LinearProbeHead, settings: ProbeSettings) -> torch.optim.Optimizer:
    """LARS as in MAE (layer-wise adaptation and weight decay on the weight only) or SGD."""
    linear = head[1]
    if settings.optimizer == "sgd":
        groups = [
            {"params": [linear.weight], "weight_decay": settings.weight_decay},
            {"params": [linear.bias], "weight_decay": 0.0},
        ]
        return torch.optim.SGD(groups, lr=0.0, momentum=settings.momentum)
    groups = [
        {"params": [linear.weight], "weight_decay": settings.weight_decay, "always_adapt": True},
        {"params": [linear.bias], "weight_decay": 0.0, "always_adapt": False},
    ]
    return Lars(groups, lr=0.0, momentum=settings.momentum)


def train_linear_probe(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    settings: ProbeSettings = ProbeSettings(),
    device: str | torch.device = "cpu",
) -> LinearProbeHead:
    """Train a probe head on cached features ``[N, D]`` with labels ``int[N]``; returns it in eval mode."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    head = LinearProbeHead(feats.shape[1], num_classes).to(device)
    optimizer = build_optimizer(head, settings)
    x, y = feats.float().to(device), labels.long().to(device)
    batch = min(settings.batch_size, x.shape[0])
    steps_per_epoch = x.shape[0] // batch  # drop the last partial batch, as MAE
    total = steps_per_epoch * settings.epochs
    warmup = int(round(settings.warmup_epochs * steps_per_epoch))
    peak = settings.peak_lr(batch)
    head.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(x.shape[0], generator=gen)[: steps_per_epoch * batch].to(device)
        for i, idx in enumerate(order.view(steps_per_epoch, batch)):
            set_lr(optimizer, lr_at(epoch * steps_per_epoch + i, total, warmup, peak))
            loss = F.cross_entropy(head(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


@torch.no_grad()
def probe_top1(head: nn.Module, feats: Tensor, labels: Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy (fraction) of a trained head on features ``[M, D]``."""
    device = next(head.parameters()).device
    preds = torch.cat([head(chunk.float().to(device)).argmax(1).cpu() for chunk in feats.split(batch_size)])
    return (preds == labels.cpu()).float().mean().item()


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    settings: ProbeSettings = ProbeSettings(),
    device: str | torch.device = "cpu",
) -> float:
    """MAE linear probe: train on the train features, return top-1 (fraction) on the test features."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    head = train_linear_probe(train_feats, train_labels, num_classes, settings, device)
    return probe_top1(head, test_feats, test_labels)


def logistic_regression_top1(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    c: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Fast probe: standardised features + multinomial logistic regression (L-BFGS); top-1 fraction."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    probe.fit(train_feats.float().numpy(), train_labels.numpy())
    return float(np.mean(probe.predict(test_feats.float().numpy()) == test_labels.numpy()))


def torch_logistic_regression_top1(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    c: float = 1.0,
    max_iter: int = 200,
) -> float:
    """On-device fast probe: ``logistic_regression_top1``'s model, fitted with torch on the features' device.

    Features ``[N, D]`` are standardised with the train mean and (biased) std, as ``StandardScaler``;
    the objective is scikit-learn's ``C * sum_i CE_i + |W|^2 / 2`` (bias not penalised), divided by
    ``C * N`` so its scale does not depend on N; full-batch L-BFGS with strong-Wolfe line search runs
    at most ``max_iter`` iterations (deterministic for fixed inputs on the CPU).

    Returns:
        Top-1 accuracy (fraction in [0, 1]) on the test features.
    """
    device = train_feats.device
    x, y = train_feats.float(), train_labels.to(device).long()
    mean, std = x.mean(0), x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = (x - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(x.shape[1], num_classes, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    l2 = 0.5 / (c * x.shape[0])
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(torch.addmm(bias, x, weight), y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        test_x = (test_feats.to(device).float() - mean) / std
        preds = torch.addmm(bias, test_x, weight).argmax(1)
    return (preds.cpu() == test_labels.cpu()).float().mean().item()
