"""What the efficiency benchmark runs: testbeds and the compared configurations.

A *testbed* (``dmjd bench --testbed cpu``) fixes everything that must be identical across
configurations on one machine (model, data, batch, augmentation, base learning rate, wall-clock
budget, evaluation) as config overrides. It is not a config preset (``dmjd pretrain --config``):
a testbed is a machine's benchmark setting, applied on top of the defaults.
A *section* is one comparison of the paper: a list of variants, each a few config overrides on
top of the testbed; the first-named baseline is what speed-ups are measured against. Variants
spell out every key they change, so they never depend on another variant's settings.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Variant:
    """One configuration of a comparison: a label and its config overrides."""

    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Claim:
    """A number the paper reports for a variant, to hold our measurement against.

    Attributes:
        kind: ``speedup`` (time-to-accuracy ratio over the baseline) or ``gain`` (linear-probe
            points over the baseline at the end of the equal wall-clock budget).
        label: the variant it is about.
        low, high: the paper's range.
        source: where the paper reports it.
    """

    kind: str
    label: str
    low: float
    high: float
    source: str


@dataclass(frozen=True)
class Section:
    """One comparison of the paper.

    Attributes:
        name: short id (``main``, ``pred_ratio``, ``targets``, ``decoder``).
        title: heading in the report.
        paper: where the paper shows it, and what it reports.
        baseline: label of the variant speed-ups are measured against.
        variants: the configurations, baseline included.
        expected_pairs: ``(worse, better)`` label pairs as the paper orders them.
        claims: the paper's numbers to compare with.
    """

    name: str
    title: str
    paper: str
    baseline: str
    variants: tuple[Variant, ...]
    expected_pairs: tuple[tuple[str, str], ...] = ()
    claims: tuple[Claim, ...] = ()


def saved_testbed(results: dict[str, Any]) -> dict[str, Any]:
    """The testbed a saved ``results.json`` ran on: its ``testbed`` entry (``preset`` in outputs
    written before the rename)."""
    return results["testbed"] if "testbed" in results else results["preset"]


def chain(*labels: str) -> tuple[tuple[str, str], ...]:
    """Consecutive ``(worse, better)`` pairs of a ranking given from worst to best."""
    return tuple(itertools.pairwise(labels))


@dataclass(frozen=True)
class Testbed:
    """Machine-level settings shared by every run of a benchmark.

    Attributes:
        name: testbed id (``smoke``, ``cpu``, ``gpu``).
        description: one line for the report.
        base: config overrides common to every run (model, data, batch, base lr, run settings).
        budget_s: training wall-clock seconds per run (``train.budget``: each run plans its own
            schedule to end there, ``dmjd.engine.budget``).
        calibrate_s: seconds of a discarded run that warms the process up before the first run.
        eval_points: evaluations per run after the one before training (about; the final one
            at the end of the run is always made).
        eval_images: seeded subset of each labelled split for the probes (None: all).
        seeds: default seeds; every configuration runs once per seed.
        warmup_fraction: warmup epochs as a fraction of the scheduled epochs.
        profile_steps, profile_warmup: measured and discarded steps of the step profile.
        threads: torch intra-op and BLAS / OpenMP threads of the benchmark process (None: the
            libraries' defaults). On a small CPU, cores minus loader workers avoids
            oversubscription, which slowed training and the probe by an order of magnitude on a
            shared 2-core machine.
        sections: default comparisons.
        pool: probe features: ``avg`` of the patch tokens (the official DMJD / ConvMAE linear
            probe) or ``cls``; None = the encoder's default.
        finetune_epochs: end-of-run fine-tuning epochs of every run's final encoder on the
            probe's labelled train split (``dmjd.eval.quick_finetune``); 0 = none.
        ete: a fixed-ETE testbed: every run trains this many effective epochs unless ``--ete`` or
            ``--budget-s`` says otherwise (None: runs train ``budget_s`` seconds).
        data: what ``--data-path`` must name, for a testbed whose data is not a packaged or
            installed data set ("" when none is needed).
    """

    name: str
    description: str
    base: tuple[str, ...]
    budget_s: float
    calibrate_s: float
    eval_points: int
    eval_images: int | None
    seeds: tuple[int, ...]
    warmup_fraction: float = 0.1
    profile_steps: int = 20
    profile_warmup: int = 5
    threads: int | None = None
    sections: tuple[str, ...] = field(default=("main", "profile"))
    pool: str | None = None
    finetune_epochs: int = 0
    ete: float | None = None
    data: str = ""


# Masking and target building blocks of the compared configurations (paper Sec. III).
_ONE_VIEW = ("masking.mask_ratio=0.75", "masking.pattern=random", "masking.num_views=1", "masking.pred_ratio=null")
_TWO_VIEWS = ("masking.mask_ratio=0.75", "masking.pattern=random", "masking.num_views=2", "masking.pred_ratio=1.0")
_NORM_PIX = ("target.name=pixels", "target.norm_pix=true", "model.vdb=false")
_JOINT = ("target.name=hog", "target.hog_variant=dmjd", "model.vdb=true", "model.projector=nonlinear")
_LR_RULE = ("optim.lr_rule=dmjd",)  # Eq. 4; equals the linear rule for K = 1

# The paper's recipe masks 2 x 2-token blocks at m_corr 0.6 (SimMIM cells; official code).
_BLOCK = ("masking.mask_ratio=0.6", "masking.pattern=block", "masking.block_size=2")
_BLOCK_ONE_VIEW = _BLOCK + ("masking.num_views=1", "masking.pred_ratio=null")
_BLOCK_TWO_VIEWS = _BLOCK + ("masking.num_views=2", "masking.pred_ratio=1.0")

MAE = Variant("MAE", _ONE_VIEW + _NORM_PIX + _LR_RULE)
PLUS_DM = Variant("+DM", _TWO_VIEWS + _NORM_PIX + _LR_RULE)
MAE_BLOCK = Variant("MAE-block", _BLOCK_ONE_VIEW + _NORM_PIX + _LR_RULE)
PLUS_DM_BLOCK = Variant("+DM-block", _BLOCK_TWO_VIEWS + _NORM_PIX + _LR_RULE)
PLUS_JD = Variant("+JD", _ONE_VIEW + _JOINT + _LR_RULE)
DMJD = Variant("DMJD", _BLOCK_TWO_VIEWS + _JOINT + _LR_RULE)  # the paper's recipe


def _pred_ratio_variant(pred_ratio: float) -> Variant:
    return Variant(
        f"m_pred {pred_ratio:.2f}",
        ("masking.mask_ratio=0.75", "masking.pattern=random", "masking.num_views=2", f"masking.pred_ratio={pred_ratio}")
        + _NORM_PIX
        + _LR_RULE,
    )


def _target_variant(label: str, target: tuple[str, ...]) -> Variant:
    return Variant(label, _TWO_VIEWS + target + ("model.vdb=true", "model.projector=nonlinear") + _LR_RULE)


def _pair(name: str, title: str, paper: str, baseline: Variant, other: Variant, claims: tuple[Claim, ...] = ()) -> Section:
    """A two-variant section: ``other`` against ``baseline``, as the paper orders them (baseline worse)."""
    return Section(
        name, title, paper, baseline.label, (baseline, other), expected_pairs=((baseline.label, other.label),), claims=claims
    )


def _with_and_without_dm(name: str, title: str, paper: str, label: str, method: tuple[str, ...]) -> Section:
    """A method against the same method with disjoint masking (the paper's Table III pattern)."""
    one, two = Variant(label, method + _ONE_VIEW + _LR_RULE), Variant(f"{label} + DM", method + _TWO_VIEWS + _LR_RULE)
    return _pair(name, title, paper, one, two)


def _decoder_variant(label: str, depth: int, projector: str | None) -> Variant:
    head = ("model.vdb=false",) if projector is None else ("model.vdb=true", f"model.projector={projector}")
    target = ("target.name=hog", "target.hog_variant=dmjd")
    return Variant(label, _TWO_VIEWS + target + (f"model.decoder_depth={depth}",) + head + _LR_RULE)


SECTIONS: dict[str, Section] = {
    s.name: s
    for s in (
        Section(
            "main",
            "Disjoint masking and joint distillation against MAE",
            "Tables II, III, VI and Fig. 6d: DM reaches MAE's accuracy 1.8x-3.7x faster (random 0.75: "
            "1.8x; block 0.6: 3.2x); JD adds +3.4 to +5.8 linear-probe points; together (DMJD: block 0.6, "
            "K=2, HOG, VDB) they converge fastest.",
            "MAE",
            (MAE, PLUS_DM, MAE_BLOCK, PLUS_DM_BLOCK, PLUS_JD, DMJD),
            expected_pairs=(
                ("MAE", "+DM"),
                ("MAE-block", "+DM-block"),
                ("MAE", "+JD"),
                ("+DM-block", "DMJD"),
                ("+JD", "DMJD"),
                ("MAE", "DMJD"),
            ),
            claims=(
                Claim("speedup", "+DM", 1.8, 3.7, "Tables II-III"),
                Claim("speedup", "+DM-block", 3.2, 3.2, "Table II (block 0.6)"),
                Claim("speedup", "DMJD", 1.8, 3.0, "Table VI"),
                Claim("gain", "DMJD", 3.4, 5.8, "Table VI"),
            ),
        ),
        _pair(
            "core",
            "DMJD (the paper's recipe) against MAE",
            "Table VI: DMJD reaches MAE's accuracy 1.8x-3x faster with +3.4 to +5.8 linear-probe points.",
            MAE,
            DMJD,
            claims=(Claim("speedup", "DMJD", 1.8, 3.0, "Table VI"), Claim("gain", "DMJD", 3.4, 5.8, "Table VI")),
        ),
        _pair(
            "dm",
            "Disjoint masking alone: MAE against MAE + DM",
            "Table II: MAE + DM (random 0.75, K = 2 disjoint views, m_pred 1.0) reaches MAE's accuracy 1.8x faster.",
            MAE,
            PLUS_DM,
            claims=(Claim("speedup", "+DM", 1.8, 1.8, "Table II (random 0.75)"),),
        ),
        _pair(
            "dm_block",
            "Disjoint masking alone with block masking: MAE-block against MAE + DM-block",
            "Table II: with block masking at m_corr 0.6, MAE + DM (K = 2, m_pred 1.0) reaches MAE's accuracy 3.2x faster.",
            MAE_BLOCK,
            PLUS_DM_BLOCK,
            claims=(Claim("speedup", "+DM-block", 3.2, 3.2, "Table II (block 0.6)"),),
        ),
        _pair(
            "jd",
            "Joint distillation alone: MAE against MAE + JD",
            "Fig. 6c-d: the visible distillation branch with HOG targets adds linear-probe accuracy over MAE.",
            MAE,
            PLUS_JD,
        ),
        Section(
            "pred_ratio",
            "Prediction rate at a fixed corruption rate of 0.75",
            "Fig. 6a: with m_corr fixed, a higher prediction rate trains faster, saturating near 0.95.",
            "MAE (m_pred 0.75)",
            (
                Variant("MAE (m_pred 0.75)", MAE.overrides),
                _pred_ratio_variant(0.85),
                _pred_ratio_variant(0.95),
                _pred_ratio_variant(1.0),
            ),
            expected_pairs=chain("MAE (m_pred 0.75)", "m_pred 0.85", "m_pred 0.95"),
        ),
        Section(
            "targets",
            "Learning targets (DM + VDB)",
            "Table IV (fine-tuning): RGB 83.1 < RGB + norm 83.9 < HOG + L2 84.2 < HOG + LayerNorm 84.4.",
            "RGB + norm",
            (
                _target_variant("RGB", ("target.name=pixels", "target.norm_pix=false")),
                _target_variant("RGB + norm", ("target.name=pixels", "target.norm_pix=true")),
                _target_variant("HOG + L2 (MaskFeat)", ("target.name=hog", "target.hog_variant=maskfeat")),
                _target_variant("HOG + LayerNorm (DMJD)", ("target.name=hog", "target.hog_variant=dmjd")),
            ),
            expected_pairs=chain("RGB", "RGB + norm", "HOG + L2 (MaskFeat)", "HOG + LayerNorm (DMJD)"),
        ),
        Section(
            "decoder",
            "Decoder depth of the masked prediction branch and the VDB projector (DM + HOG)",
            "Table V (linear probe): depth 2 linear 60.4 < depth 2 no VDB 61.8 < depth 2 nonlinear 62.5 "
            "< depth 4 65.0 < depth 8 67.2.",
            "depth 2, no VDB",
            (
                _decoder_variant("depth 2, no VDB", 2, None),
                _decoder_variant("depth 2, linear", 2, "linear"),
                _decoder_variant("depth 2, nonlinear", 2, "nonlinear"),
                _decoder_variant("depth 4, nonlinear", 4, "nonlinear"),
                _decoder_variant("depth 8, nonlinear", 8, "nonlinear"),
            ),
            expected_pairs=chain(
                "depth 2, linear", "depth 2, no VDB", "depth 2, nonlinear", "depth 4, nonlinear", "depth 8, nonlinear"
            ),
        ),
        _with_and_without_dm(
            "simmim",
            "SimMIM (full sequence + mask token, L1 on pixels) with and without DM",
            "Table III: SimMIM + DM reaches SimMIM's fine-tuning accuracy 1.4x faster.",
            "SimMIM",
            ("model.style=simmim", "model.vdb=false", "target.name=pixels", "target.norm_pix=false", "loss.mim_loss=l1"),
        ),
        _with_and_without_dm(
            "maskfeat",
            "MaskFeat (SimMIM style, HOG + MSE) with and without DM",
            "Table III: MaskFeat + DM (block 0.6) reaches MaskFeat's accuracy 3.6x faster.",
            "MaskFeat",
            ("model.style=simmim", "model.vdb=false", "target.name=hog", "target.hog_variant=maskfeat", "loss.mim_loss=mse"),
        ),
        Section(
            "vis_pairing",
            "The visible distillation branch's pairing: Eq. 5 against the official code's",
            "docs/fidelity.md: the official forward_loss pairs pred_vis (in the masks' draw order) with "
            "target[mask == 0] (ascending token order), so ~99 % of visible tokens regress another token's target; "
            "Eq. 5 pairs each token with its own. The paper's numbers were produced with the official pairing.",
            "DMJD, official pairing",
            (
                Variant("DMJD, official pairing", DMJD.overrides + ("loss.vis_pairing=official",)),
                Variant("DMJD", DMJD.overrides + ("loss.vis_pairing=token",)),
            ),
            expected_pairs=(("DMJD, official pairing", "DMJD"),),
        ),
        Section(
            "convit",
            "ConvMAE (ConViT) against ConViT + DMJD",
            "Table VI: ConViT-B + DMJD matches ConvMAE's fine-tuning with 3x fewer GPU-hours and +5.8 linear-probe points.",
            "ConvMAE",
            (
                Variant("ConvMAE", ("model.arch=convit",) + _ONE_VIEW + _NORM_PIX + _LR_RULE),
                Variant("ConvMAE + DMJD", ("model.arch=convit",) + _BLOCK_TWO_VIEWS + _JOINT + _LR_RULE),
            ),
            expected_pairs=(("ConvMAE", "ConvMAE + DMJD"),),
        ),
    )
}

SECTION_NAMES = (*SECTIONS, "profile")

# The model every testbed trains: a ViT on 32 x 32 Fashion-MNIST (8 x 8 grid of 4 px patches),
# HOG on 2 px cells (2 x 2 cells x 9 bins per patch).
_GEOMETRY = ("model.img_size=32", "model.patch_size=4", "model.in_chans=1", "target.cell_size=2")
# The same 8 x 8 grid on 64 px RGB images (8 px patches, HOG on 4 px cells).
_GEOMETRY_64_RGB = ("model.img_size=64", "model.patch_size=8", "model.in_chans=3", "target.cell_size=4")


def _decoder(width: int, depth: int, heads: int) -> tuple[str, ...]:
    """A masked prediction branch of ``depth`` blocks of ``width``, and a VDB projector of that width."""
    return (
        f"model.decoder_dim={width}", f"model.decoder_depth={depth}", f"model.decoder_heads={heads}",
        f"model.vdb_hidden={width}",
    )  # fmt: skip


def _small_vit(width: int, depth: int, heads: int) -> tuple[str, ...]:
    """The ViT-Ti size (``model.size=tiny``) narrowed to ``width``, ``depth`` blocks and ``heads`` heads,
    with a decoder as wide."""
    return ("model.size=tiny", f"model.embed_dim={width}", f"model.depth={depth}", f"model.num_heads={heads}",
            *_decoder(width, max(1, depth // 2), heads))  # fmt: skip


def _training(device: str, precision: str, batch_size: int, log_interval: int, blr: float = 1e-3) -> tuple[str, ...]:
    """Optimisation and run settings of every testbed: base lr ``blr``, no progress bar, TensorBoard
    or intermediate checkpoints (they would cost run time)."""
    return (
        f"optim.batch_size={batch_size}", f"optim.blr={blr:g}", f"train.device={device}", f"train.precision={precision}",
        "train.progress=false", "train.tensorboard=false", "train.checkpoint_interval=100000",
        f"train.log_interval={log_interval}",
    )  # fmt: skip


def _study(name: str, data_words: str, data_base: tuple[str, ...], eval_images: int | None, **extra: Any) -> Testbed:
    """A fixed-ETE study testbed on 2 CPU cores (issue 30): the six configurations of Table II and
    Fig. 6 (main section) at 100 ETE per run over 3 seeds, on the cpu testbed's 4-block ViT (width 64)
    and ``data_base``'s data; 10 epochs of fine-tuning at the end."""
    return Testbed(
        name=name,
        description=(
            "2 CPU cores, hours, resumable: the main section's six configurations at equal ETE, 100 ETE per run, "
            f"3 seeds, on the cpu testbed's 4-block ViT (width 64) and {data_words}; 10 epochs of fine-tuning at "
            "the end. Its figures do not depend on the machine's load"
        ),
        base=(*data_base, *_small_vit(64, 4, 4), "data.pipeline=device", *_training("cpu", "fp32", 128, 50, blr=4e-3)),
        budget_s=300.0,
        calibrate_s=30.0,
        eval_points=8,
        eval_images=eval_images,
        seeds=(0, 1, 2),
        threads=2,
        sections=("main",),
        pool="avg",
        finetune_epochs=10,
        ete=100.0,
        **extra,
    )


TESTBEDS: dict[str, Testbed] = {
    p.name: p
    for p in (
        Testbed(
            name="smoke",
            description="seconds, any machine: checks that every section runs end to end, on a 1-block ViT and 16 "
            "px images of the embedded sample; the tests use it, and its accuracies mean nothing",
            base=(
                "model.img_size=16",
                "model.patch_size=4",
                "model.in_chans=1",
                "target.cell_size=2",
                *_small_vit(32, 1, 2),
                "data.name=embedded",
                "data.limit=128",
                "data.num_workers=0",
                *_training("cpu", "fp32", 32, 2),
            ),
            budget_s=1.5,
            calibrate_s=0.25,
            eval_points=2,
            eval_images=64,
            seeds=(0,),
            profile_steps=2,
            profile_warmup=1,
            threads=1,
            pool="avg",
            finetune_epochs=1,
        ),
        Testbed(
            name="cpu",
            description=(
                "2 CPU cores, under 45 min: MAE against DMJD (the core section) on a 4-block ViT (width 64) and "
                "all 60,000 Fashion-MNIST images through the device-resident path (no loader workers), 2 seeds, "
                "8 evaluations spaced in steps, then 10 epochs of fine-tuning on the 2,000 probe labels; base lr "
                "4e-3 for every configuration. It tests the methods' order at equal wall time on a small CPU, "
                "not the paper's ImageNet-scale numbers"
            ),
            base=(
                *_GEOMETRY,
                *_small_vit(64, 4, 4),
                "data.name=fashion_mnist",
                "data.pipeline=device",
                *_training("cpu", "fp32", 128, 20, blr=4e-3),  # blr: docs/results/cpu-2026-11-28-night/NOTES.md
            ),
            budget_s=500.0,
            calibrate_s=30.0,
            eval_points=8,
            eval_images=2000,
            seeds=(0, 1),
            threads=2,
            sections=("core",),
            pool="avg",
            finetune_epochs=10,
        ),
        Testbed(
            name="gpu",
            description=(
                "one H100/H200, bf16, about 7 min: the six configurations of Tables II, III and VI (main "
                "section) x 3 seeds on ViT-Ti/4 (12 blocks, width 192) and all 60,000 Fashion-MNIST images held "
                "on the GPU (device-resident path); batch 4096 at MAE's base lr 1.5e-4, so that a small model's "
                "step carries enough images to outweigh its kernel launches"
            ),
            base=(
                "model.size=tiny",
                *_GEOMETRY,
                *_decoder(128, 4, 4),
                "data.name=fashion_mnist",
                "data.pipeline=device",
                *_training("cuda", "bf16", 4096, 5, blr=1.5e-4),
            ),
            budget_s=11.0,
            calibrate_s=4.0,
            eval_points=3,
            eval_images=5000,
            seeds=(0, 1, 2),
            profile_steps=20,
            profile_warmup=5,
            sections=("main", "profile"),
            pool="avg",
            finetune_epochs=5,
        ),
        _study(
            "fmnist-ete",
            "the first 2,000 Fashion-MNIST training images at 32 px; probes on 2,000 + 2,000 images",
            (*_GEOMETRY, "data.name=fashion_mnist", "data.limit=2000"),
            eval_images=2000,
        ),
        _study(
            "clipart-ete",
            "8 px patches on the 11-category clip-art folder at 64 px RGB (1,280 training images; probes on all of "
            "train/ and val/)",
            _GEOMETRY_64_RGB,
            eval_images=None,
            data="the folder written by tools/make_clipart_folder.py (Debian's openclipart-png at 64 px)",
        ),
    )
}


def add_testbed_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--testbed NAME`` (default ``cpu``), and ``--preset NAME``, its former name, hidden, so that
    older command lines still run."""
    parser.add_argument("--testbed", choices=sorted(TESTBEDS), default="cpu", help=help)
    parser.add_argument("--preset", dest="testbed", choices=sorted(TESTBEDS), default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # fmt: skip
