"""Evaluation and export: kNN, linear probe, fine-tuning, label-free measures (RankMe, held-out
masked-prediction loss), t-SNE, figures, curves, timm export.

Names are imported on first use (PEP 562), so that ``import dmjd.eval.visualize`` or the CLI does
not load scikit-learn and every protocol up front.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "InputSpec": "loading",
    "load_encoder": "loading",
    "load_dmjd_model": "loading",
    "load_timm_encoder": "loading",
    "extract_features": "features",
    "labelled_splits": "features",
    "rankme": "label_free",
    "heldout_loss": "label_free",
    "target_key": "label_free",
    "knn_scores": "knn",
    "knn_top1": "knn",
    "ProbeSettings": "linear_probe",
    "LinearProbeHead": "linear_probe",
    "linear_probe": "linear_probe",
    "train_linear_probe": "linear_probe",
    "logistic_regression_top1": "linear_probe",
    "FinetuneSettings": "finetune",
    "Finetuner": "finetune",
    "build_classifier": "finetune",
    "finetune_transforms": "finetune",
    "OnlineMonitor": "monitor",
    "select_classes": "tsne",
    "tsne_embedding": "tsne",
    "save_tsne_figure": "tsne",
    "save_curves_figure": "plot",
    "export_encoder": "export",
    "save_reconstruction_figure": "visualize",
    "register_eval_commands": "commands",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dmjd.eval' has no attribute {name!r}")
    return getattr(import_module(f"dmjd.eval.{_EXPORTS[name]}"), name)
