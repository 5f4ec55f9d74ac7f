"""A training loop of your own, from dmjd's public API: disjoint masking, a HOG target, the DMJD model,
its loss and the optimizer that ``dmjd pretrain`` uses, for a few steps on a batch of your tensors.

    python examples/custom_loop.py --steps 5

What the CLI does that you do here by hand:
- images are ``float[B, C, H, W]`` in [0, 1]; targets are computed from them as they are, the model
  gets them normalised with the data set's mean/std (``default_mean_std``: ImageNet's for RGB);
- the masks of a step come from a seeded generator (the CLI seeds them by step: ``StepMasks``);
- the learning rate follows the paper's rule (Eq. 4, ``effective_lr``) and the optimizer is
  AdamW over dmjd's parameter groups (``build_optimizer``); warmup + cosine is ``lr_at``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from dmjd.data import Normalize, default_mean_std
from dmjd.engine import build_optimizer, effective_lr
from dmjd.losses import dmjd_loss, loss_values
from dmjd.masking import DisjointMasking, MaskedViews
from dmjd.models import build_model
from dmjd.targets import create_target


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Train a small DMJD model for ``--steps`` steps on one fixed random batch; returns each step's losses."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--blr", type=float, default=1e-2, help="base learning rate of Eq. 4")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    grid = args.img_size // args.patch_size
    masking = DisjointMasking(grid_size=(grid, grid), mask_ratio=0.6, num_views=2, pred_ratio=1.0,
                              pattern="block", block_size=2)  # fmt: skip
    target = create_target("hog", patch_size=args.patch_size, in_chans=3, variant="dmjd", cell_size=args.patch_size // 2)
    model = build_model(target_dim=target.dim, size="tiny", img_size=args.img_size, patch_size=args.patch_size,
                        decoder_dim=128, decoder_depth=2, decoder_heads=4, vdb=True, vdb_hidden=128)  # fmt: skip
    normalize = Normalize(*default_mean_std(in_chans=3))  # the CLI's default: ImageNet mean/std
    lr = effective_lr(args.blr, args.batch_size, masking.num_views, masking.mask_ratio, masking.nominal_pred_ratio)
    optimizer = build_optimizer(model, lr)

    images = torch.rand(args.batch_size, 3, args.img_size, args.img_size)  # your images, in [0, 1]
    generator = torch.Generator().manual_seed(0)
    history = []
    for step in range(args.steps):
        views = MaskedViews.from_mask(masking(args.batch_size, generator=generator))  # bool [B, K, L]
        targets = target(images)  # [B, L, T], from the raw images, once for the K views
        out = model(normalize(images), views)
        losses = dmjd_loss(out, targets, views)  # {"loss", "loss_mim", "loss_vis"}: tensors
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(loss_values(losses))  # plain floats, for logging
        print(f"step {step + 1}/{args.steps}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()))
    return history


if __name__ == "__main__":
    main()
