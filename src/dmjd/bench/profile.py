"""Step profile: where the time of one pre-training step goes (issue 4, item 4).

A step is split into data (waiting for the loader and the host-to-device copy), masking, targets,
encoder (forward and backward), masked prediction branch (decoder, its loss, forward and
backward), visible distillation branch (VDB) and optimizer. To time the branches' backward passes
apart from the encoder's, the encoder output is detached: each branch's loss is back-propagated
to it, then the accumulated gradient is back-propagated through the encoder once; the gradients
are exactly those of the joint backward pass. On a GPU every part is bracketed by
``torch.cuda.synchronize``, which the normal training step does not do, so the step is also timed
un-instrumented (the engine's own ``compute_losses`` + optimizer step) for images/s and views/s.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from dmjd.bench.environment import release_device_memory
from dmjd.config import Config
from dmjd.data import endless
from dmjd.engine import Pretrainer
from dmjd.losses import dmjd_loss
from dmjd.masking import MaskedViews
from dmjd.models.dmjd import DMJDOutput, MaskedEncoder

PARTS = ("data", "masking", "targets", "encoder", "decoder", "vdb", "optimizer")


class PartTimer:
    """Accumulates wall time per named part; synchronises the GPU around each part."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = dict.fromkeys(PARTS, 0.0)
        self.enabled = True

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        if self.enabled:
            self.seconds[part] += time.perf_counter() - start


def _autocast(trainer: Pretrainer) -> AbstractContextManager:
    if trainer.amp_dtype is None:
        return nullcontext()
    return torch.autocast(trainer.device.type, dtype=trainer.amp_dtype)


def _backward(trainer: Pretrainer, loss: Tensor) -> None:
    (trainer.scaler.scale(loss) if trainer.scaler is not None else loss).backward()


def split_backward(trainer: Pretrainer, images: Tensor, views: MaskedViews, timer: PartTimer) -> None:
    """Targets, forward and backward of one batch with encoder, decoder and VDB timed apart.

    Leaves in ``.grad`` exactly the gradients of the joint ``compute_losses(...)["loss"]``.
    """
    model, loss_cfg = trainer.model, trainer.cfg.loss
    with timer("targets"), _autocast(trainer):
        targets = trainer.target(images)
    with timer("encoder"), _autocast(trainer):
        latent = cast(MaskedEncoder, model.encoder).forward_masked(trainer.normalize(images), views)
    detached = latent.detach().requires_grad_()
    with timer("decoder"):
        with _autocast(trainer):
            pred_masked = model.mpb(detached, views)
        if loss_cfg.mim_weight > 0:
            with _autocast(trainer):
                out = DMJDOutput(pred_masked, None, detached)
                loss = dmjd_loss(out, targets, views, mim_weight=loss_cfg.mim_weight, vis_weight=0.0)["loss"]
            _backward(trainer, loss)
    if model.vdb is not None:
        with timer("vdb"):
            with _autocast(trainer):
                pred_visible = model.vdb(detached[:, model.encoder.num_prefix_tokens :])
            if loss_cfg.vis_weight > 0:
                with _autocast(trainer):
                    out = DMJDOutput(pred_masked.detach(), pred_visible, detached)
                    loss = dmjd_loss(out, targets, views, mim_weight=0.0, vis_weight=loss_cfg.vis_weight,
                                     vis_beta=loss_cfg.vis_beta)["loss"]  # fmt: skip
                _backward(trainer, loss)
    with timer("encoder"):
        latent.backward(detached.grad)


def split_step(trainer: Pretrainer, batches: Iterator[Tensor], micro_step: int, timer: PartTimer) -> None:
    """One training step with each part timed separately."""
    with timer("data"):
        images = next(batches).to(trainer.device, non_blocking=True)
    with timer("masking"):
        views = trainer.step_masks(micro_step, images.shape[0])
    split_backward(trainer, images, views, timer)
    with timer("optimizer"):
        trainer.optimizer_step()


def plain_steps(trainer: Pretrainer, batches: Iterator[Tensor], first_step: int, steps: int) -> float:
    """Seconds for ``steps`` un-instrumented training steps (one synchronisation at each end)."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(first_step, first_step + steps):
        images = next(batches).to(trainer.device, non_blocking=True)
        views = trainer.step_masks(i, images.shape[0])
        _backward(trainer, trainer.compute_losses(images, views)["loss"])
        trainer.optimizer_step()
    sync()
    return time.perf_counter() - start


def profile_step(cfg: Config, workdir: str | Path, steps: int = 20, warmup: int = 5) -> dict[str, Any]:
    """Per-part milliseconds per step, and the un-instrumented step's images/s and views/s.

    Args:
        cfg: the run configuration (its data, batch, precision and device are used).
        workdir: scratch folder for the trainer (deleted afterwards).
        steps: measured steps of each kind; warmup: discarded steps before them.

    Returns:
        ``{"ms": {part: ms per step}, "instrumented_ms", "step_ms", "images_per_s", "views_per_s",
        "batch_size", "num_views", "device"}``.
    """
    workdir = Path(workdir)
    try:
        trainer = Pretrainer(cfg, workdir, overwrite=True)
        trainer.model.train()
        batches = endless(trainer.batches)
        timer = PartTimer(trainer.device)
        timer.enabled = False
        for i in range(warmup):
            split_step(trainer, batches, i, timer)
        timer.enabled = True
        for i in range(warmup, warmup + steps):
            split_step(trainer, batches, i, timer)
        plain_steps(trainer, batches, warmup + steps, warmup)
        seconds = plain_steps(trainer, batches, 2 * warmup + steps, steps)
        views, device = trainer.masking.num_views, str(trainer.device)
        del trainer, batches
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        release_device_memory()
    batch = cfg.optim.batch_size
    ms = {part: 1000 * s / steps for part, s in timer.seconds.items()}
    step_s = seconds / steps
    return {
        "ms": ms,
        "instrumented_ms": sum(ms.values()),
        "step_ms": 1000 * step_s,
        "images_per_s": batch / step_s,
        "views_per_s": batch * views / step_s,
        "batch_size": batch,
        "num_views": views,
        "device": device,
    }


def profile_configs(cfgs: dict[str, Config], workdir: str | Path, steps: int, warmup: int) -> dict[str, Any]:
    """``profile_step`` of each labelled configuration (e.g. MAE and DMJD at the same batch)."""
    out = {}
    for label, cfg in cfgs.items():
        print(f"bench: profiling {label} ({steps} steps after {warmup} warm-up steps)", flush=True)
        out[label] = profile_step(cfg, workdir, steps, warmup)
    return {"steps": steps, "warmup": warmup, "configs": out}
