"""Frozen-feature protocols: weighted kNN, linear probes, and the shared feature plumbing."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Dataset

from dmjd.data import DataError, Normalize, eval_transform
from dmjd.eval.features import (
    dataset_labels,
    extract_features,
    interleave_shards,
    labelled_splits,
    num_classes,
    pool_tokens,
    shard_indices,
)
from dmjd.eval.knn import knn_scores, knn_top1
from dmjd.eval.linear_probe import (
    LinearProbeHead,
    ProbeSettings,
    build_optimizer,
    linear_probe,
    logistic_regression_top1,
    torch_logistic_regression_top1,
)
from dmjd.models import create_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(num_classes: int = 10, n: int = 1000, dim: int = 32, spread: float = 0.3, seed: int = 0):
    """Separable synthetic features: one Gaussian blob per class; (train_x, train_y, test_x, test_y)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=g) * 3
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = centers[y] + spread * torch.randn(n, dim, generator=g)
    half = n // 2
    return x[:half], y[:half], x[half:], y[half:]


def shuffled(labels: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


# ----------------------------------------------------------------------------------------- kNN
def reference_knn_votes(train, train_y, query, num_classes, k, temperature):
    """Per-query loop in float64: cosine similarities, k best, exp(sim / T) votes."""
    votes = np.zeros((len(query), num_classes))
    for qi, q in enumerate(query.double().numpy()):
        sims = [float(q @ t) / (np.linalg.norm(q) * np.linalg.norm(t)) for t in train.double().numpy()]
        for i in sorted(range(len(sims)), key=lambda i: -sims[i])[:k]:
            votes[qi, int(train_y[i])] += math.exp(sims[i] / temperature)
    return votes


@pytest.mark.parametrize(("k", "temperature", "chunk"), [(1, 0.07, 7), (5, 0.5, 3), (20, 0.07, 1024), (60, 1.0, 10)])
def test_knn_votes_equal_per_query_reference(k, temperature, chunk):
    g = torch.Generator().manual_seed(k)
    train, query = torch.randn(50, 8, generator=g), torch.randn(23, 8, generator=g)
    train_y = torch.randint(0, 4, (50,), generator=g)
    got = knn_scores(train, train_y, query, 4, k, temperature, chunk_size=chunk)
    want = reference_knn_votes(train, train_y, query, 4, min(k, 50), temperature)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-4)


def test_knn_hand_computed_vote():
    # query (1, 0): neighbours (1, 0) [label 0, sim 1] and (0, 1), (0, -1) [label 1, sim 0 each].
    train = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0]])
    scores = knn_scores(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]]), 2, k=3, temperature=0.5)
    torch.testing.assert_close(scores, torch.tensor([[math.exp(2.0), 2.0]]))


def test_knn_separable_features_and_shuffled_labels():
    train_x, train_y, test_x, test_y = blobs()
    assert knn_top1(train_x, train_y, test_x, test_y) == 1.0
    assert knn_top1(train_x, shuffled(train_y), test_x, test_y) < 0.2  # chance is 0.1


def test_knn_rejects_bad_parameters():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="k >= 1"):
        knn_scores(x, y, x, 2, k=0)


# -------------------------------------------------------------------------------- linear probe
def test_probe_head_is_mae_head():
    head = LinearProbeHead(256, 100)
    bn, linear = head
    assert not bn.affine and bn.eps == 1e-6
    assert 0.009 < linear.weight.std().item() < 0.011 and abs(linear.weight.mean().item()) < 1e-3
    assert torch.all(linear.bias == 0)


def test_lars_adapts_the_weight_but_not_the_bias():
    head = LinearProbeHead(4, 3)
    optimizer = build_optimizer(head, ProbeSettings(optimizer="lars", momentum=0.0))
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    w, b = head[1].weight.detach().clone(), head[1].bias.detach().clone()
    head[1].weight.grad = torch.full_like(w, 2.0)
    head[1].bias.grad = torch.full_like(b, 0.5)
    optimizer.step()
    # weight: step of norm 0.001 * |w| along the gradient (trust ratio); bias: plain SGD step.
    expected = w - 0.001 * w.norm() * head[1].weight.grad / head[1].weight.grad.norm()
    torch.testing.assert_close(head[1].weight.detach(), expected)
    torch.testing.assert_close(head[1].bias.detach(), b - 0.5)


@pytest.mark.parametrize(
    "settings", [ProbeSettings(epochs=30, batch_size=64), ProbeSettings(epochs=30, batch_size=64, optimizer="lars", lr=6.4)]
)
def test_linear_probe_separable_and_shuffled(settings):
    train_x, train_y, test_x, test_y = blobs(spread=1.0)
    assert linear_probe(train_x, train_y, test_x, test_y, settings) > 0.98
    assert linear_probe(train_x, shuffled(train_y), test_x, test_y, settings) < 0.2


@pytest.mark.parametrize("probe", [logistic_regression_top1, torch_logistic_regression_top1])
def test_fast_probes_separable_and_shuffled(probe):
    train_x, train_y, test_x, test_y = blobs(spread=1.0)
    assert probe(train_x, train_y, test_x, test_y) > 0.98
    assert probe(train_x, shuffled(train_y), test_x, test_y) < 0.2


def test_torch_probe_agrees_with_sklearn_on_overlapping_correlated_features():
    """Overlapping classes seen through an ill-conditioned linear map (like real encoder features):
    both probes fit the same regularised objective, so their accuracies agree within a few points."""
    train_x, train_y, test_x, test_y = blobs(n=2000, dim=64, spread=12.0)
    g = torch.Generator().manual_seed(2)
    mixing = torch.randn(64, 64, generator=g) * torch.logspace(-2, 1, 64)
    train_x, test_x = train_x @ mixing + 5.0, test_x @ mixing + 5.0
    sklearn_top1 = logistic_regression_top1(train_x, train_y, test_x, test_y)
    torch_top1 = torch_logistic_regression_top1(train_x, train_y, test_x, test_y)
    assert 0.3 < sklearn_top1 < 0.9  # a non-trivial problem
    assert abs(torch_top1 - sklearn_top1) < 0.03
    weak = torch_logistic_regression_top1(train_x, train_y, test_x, test_y, c=1e-4)
    assert weak < sklearn_top1 and abs(weak - logistic_regression_top1(train_x, train_y, test_x, test_y, c=1e-4)) < 0.03


def test_probe_settings_validate():
    with pytest.raises(ValueError, match="epochs"):
        ProbeSettings(epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        ProbeSettings(optimizer="adam")
    assert ProbeSettings(blr=0.1).peak_lr(512) == pytest.approx(0.2)
    assert ProbeSettings(lr=0.3).peak_lr(512) == 0.3


# ---------------------------------------------------------------------------------- features
class Images(Dataset):
    """Random images in [0, 1] with labels, as dmjd data sets yield them."""

    def __init__(self, n: int, chans: int = 1, size: int = 16) -> None:
        g = torch.Generator().manual_seed(n)
        self.x = torch.rand(n, chans, size, size, generator=g)
        self.labels = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i]), 0


def tiny_vit():
    return create_encoder("vit", "tiny", img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)


@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_extract_features_equals_direct_forward(pool):
    enc, data, norm = tiny_vit(), Images(13), Normalize((0.5,), (0.25,))
    enc.train()
    feats, labels = extract_features(enc, data, batch_size=5, pool=pool, normalize=norm, progress=False)
    assert enc.training, "the encoder's mode must be restored"
    enc.eval()
    with torch.no_grad():
        tokens = enc.forward_features((data.x - 0.5) / 0.25)
    want = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(1)
    torch.testing.assert_close(feats, want)
    assert feats.dtype == torch.float32 and torch.equal(labels, data.labels)


def test_cls_pool_needs_a_class_token():
    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2,
                            num_classes=0, class_token=False, global_pool="avg")  # fmt: skip
    with pytest.raises(ValueError, match="no class token"):
        pool_tokens(vit, torch.zeros(2, 16, 16), "cls")


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_item_once_and_interleave_back(world):
    for n in range(1, 12):
        shards = [shard_indices(n, rank, world) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1, "every process runs the same number of batches"
        gathered = torch.stack([torch.tensor(s) for s in shards])
        assert torch.equal(interleave_shards(gathered, n), torch.arange(n))
        assert torch.equal(interleave_shards(gathered.unsqueeze(-1).expand(-1, -1, 2), n)[:, 1], torch.arange(n))


def test_labelled_splits_of_the_embedded_sample():
    tf = eval_transform(16, 1)
    train, test = labelled_splits("embedded", None, tf, tf, max_images=50, seed=3)
    again, _ = labelled_splits("embedded", None, tf, tf, max_images=50, seed=3)
    assert len(train) == len(test) == 50 and train.indices == again.indices
    labels = dataset_labels(train)
    assert labels.tolist() == [train[i][1] for i in range(50)]
    assert num_classes(train, test) == 10 and train[0][0].shape == (1, 16, 16)


def _image_tree(root, splits, classes):
    for split in splits:
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")


def test_imagefolder_splits_from_root_or_train_folder(tmp_path):
    _image_tree(tmp_path, ("train", "val"), ("cat", "dog"))
    tf = eval_transform(8, 1)
    for path in (tmp_path, tmp_path / "train"):
        train, test = labelled_splits("imagefolder", str(path), tf, tf)
        assert len(train) == len(test) == 4 and dataset_labels(test).tolist() == [0, 0, 1, 1]


def test_imagefolder_without_validation_split_or_labels_is_an_error(tmp_path):
    tf = eval_transform(8, 1)
    _image_tree(tmp_path / "a", ("train",), ("cat",))
    with pytest.raises(DataError, match="val"):
        labelled_splits("imagefolder", str(tmp_path / "a"), tf, tf)
    for split in ("train", "val"):
        (tmp_path / "b" / split).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "b" / split / "x.png")
    with pytest.raises(DataError, match="unlabelled"):
        labelled_splits("imagefolder", str(tmp_path / "b"), tf, tf)


def _sharded_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    feats, labels = extract_features(tiny_vit(), Images(11), batch_size=2, progress=False)
    torch.save((feats, labels), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_extract_features_shards_over_processes_and_gathers_in_order(tmp_path):
    args = (2, str(tmp_path / "init"), str(tmp_path))
    torch.multiprocessing.start_processes(_sharded_worker, args=args, nprocs=2, start_method="fork")
    torch.manual_seed(0)
    want, want_labels = extract_features(tiny_vit(), Images(11), batch_size=4, progress=False)
    for rank in range(2):
        feats, labels = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(feats, want)
        assert torch.equal(labels, want_labels)
