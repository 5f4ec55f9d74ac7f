"""t-SNE of frozen features for up to 20 classes, drawn as a scatter plot (the paper's Fig. 7)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.manifold import TSNE
from torch import Tensor

from dmjd.eval.plot import save_figure

MAX_CLASSES = 20  # distinct colours of the tab20 colour map


def select_classes(labels: np.ndarray, num_classes: int = MAX_CLASSES, per_class: int = 100, seed: int = 0) -> np.ndarray:
    """Indices of at most ``per_class`` random items of each of the first ``num_classes`` classes.

    Raises:
        ValueError: ``num_classes`` outside ``[1, 20]`` or ``per_class < 1``.
    """
    if not 1 <= num_classes <= MAX_CLASSES or per_class < 1:
        raise ValueError(f"t-SNE draws 1..{MAX_CLASSES} classes with >= 1 image each, got {num_classes}, {per_class}")
    rng = np.random.default_rng(seed)
    chosen = np.unique(labels[labels >= 0])[:num_classes]
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in chosen]
    return np.sort(np.concatenate(picks))


def tsne_embedding(feats: Tensor | np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE embedding ``[N, 2]`` of features ``[N, D]`` (PCA initialisation, automatic learning
    rate; the perplexity is capped below ``N / 3`` so small sets work)."""
    x = np.asarray(feats, dtype=np.float32)
    perplexity = min(perplexity, max((x.shape[0] - 1) / 3, 1.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return tsne.fit_transform(x)


def save_tsne_figure(
    embedding: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    title: str = "t-SNE of frozen features",
) -> Path:
    """Scatter ``embedding [N, 2]`` coloured by class (one tab20 colour per class) into a PNG."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(np.unique(labels)):
        pts = embedding[labels == c]
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        ax.scatter(pts[:, 0], pts[:, 1], s=6, color=cmap(i % MAX_CLASSES), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=130)
