"""Tests for dmjd.masking: patterns, exact-count selection, disjoint masking, view indices."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmjd.masking import (
    PATTERNS,
    DisjointMasking,
    MaskedViews,
    block_scores,
    gather_tokens,
    measured_pred_ratio,
    random_scores,
    rectangle_scores,
    register_pattern,
    select_lowest,
)

PROPERTY = settings(max_examples=80, deadline=None)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_counts(
    grid: tuple[int, int], m: float, k: int, p: float | None, pattern: str, s: int
) -> tuple[int, int, list[int]] | None:
    """Independent statement of the counting rules: (n_corr, n_pred, new per view) in
    units, or None when the configuration must be rejected."""
    h, w = grid
    if (pattern != "block" and s != 1) or h % s or w % s:
        return None
    if p is not None and p < m:
        return None
    u = (h // s) * (w // s)
    n_corr = u - math.floor(u * (1 - m) + 1e-6)
    if not 0 < n_corr < u:
        return None
    n_pred = min(u, k * n_corr) if p is None else max(n_corr, u - math.floor(u * (1 - p) + 1e-6))
    if n_pred > k * n_corr or (n_pred < u and n_pred - n_corr < k - 1):
        return None
    extra = n_pred - n_corr
    new = [n_corr] + [extra // (k - 1) + (i < extra % (k - 1)) for i in range(k - 1)]
    return n_corr, n_pred, new


@st.composite
def configs(draw: st.DrawFn) -> dict:
    pattern = draw(st.sampled_from(sorted(PATTERNS)))
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    if pattern == "block":
        s = draw(st.sampled_from([d for d in range(1, 17) if h % d == 0 and w % d == 0]))
    else:
        s = 1
    m = draw(st.floats(0.05, 0.95))
    k = draw(st.integers(1, 5))
    p = draw(st.one_of(st.none(), st.floats(m, 1.0)))
    return dict(grid_size=(h, w), mask_ratio=m, num_views=k, pred_ratio=p, pattern=pattern, block_size=s)


def new_tokens_per_view(mask: torch.Tensor) -> torch.Tensor:
    """[B, K] count of tokens each view masks that no earlier view masked."""
    before = torch.cumsum(mask.int(), dim=1) - mask.int()
    return (mask & (before == 0)).sum(-1)


@PROPERTY
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_disjoint_masking_properties(cfg: dict, seed: int) -> None:
    h, w = cfg["grid_size"]
    s, k = cfg["block_size"], cfg["num_views"]
    ref = reference_counts(cfg["grid_size"], cfg["mask_ratio"], k, cfg["pred_ratio"], cfg["pattern"], s)
    if ref is None:
        with pytest.raises(ValueError):
            DisjointMasking(**cfg)
        return
    n_corr, n_pred, new = ref
    masking = DisjointMasking(**cfg)
    cell = s * s
    assert masking.num_masked == n_corr * cell
    assert masking.num_predicted == n_pred * cell
    assert masking.num_visible == h * w - n_corr * cell

    mask = masking(6, generator=gen(seed))
    assert mask.shape == (6, k, h * w) and mask.dtype == torch.bool
    assert mask.device.type == "cpu"
    assert (mask.sum(-1) == masking.num_masked).all()
    assert (mask.any(1).sum(-1) == masking.num_predicted).all()
    added = new_tokens_per_view(mask)
    assert added.tolist() == [[n * cell for n in new]] * 6
    # Disjoint regulation: a view adds a never-masked token whenever one remains.
    covered_before = torch.cumsum(added, dim=1) - added
    assert ((added >= 1) | (covered_before == h * w)).all()
    # Every view is a union of whole cells.
    cells = mask.view(6, k, h // s, s, w // s, s)
    assert (cells == cells[:, :, :, :1, :, :1]).all()
    assert torch.equal(mask, masking(6, generator=gen(seed)))
    assert math.isclose(measured_pred_ratio(mask).item(), masking.num_predicted / (h * w), rel_tol=1e-6)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(grid_size=(14, 14), mask_ratio=0.75, num_views=2, pattern="random"),
        dict(grid_size=(8, 8), mask_ratio=0.6, num_views=3, pattern="block", block_size=2),
        dict(grid_size=(16, 12), mask_ratio=0.5, num_views=2, pattern="rectangle"),
        dict(grid_size=(1, 5), mask_ratio=0.4, num_views=2, pattern="random"),
    ],
)
def test_same_seed_same_masks_other_seed_differs(cfg: dict) -> None:
    masking = DisjointMasking(**cfg)
    first = masking(16, generator=gen(3))
    assert torch.equal(first, masking(16, generator=gen(3)))
    assert not torch.equal(first, masking(16, generator=gen(4)))


def test_default_generator_follows_torch_seed() -> None:
    masking = DisjointMasking((7, 7), 0.5, num_views=2)
    torch.manual_seed(11)
    first = masking(4)
    torch.manual_seed(11)
    assert torch.equal(first, masking(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_and_generator() -> None:
    masking = DisjointMasking((14, 14), 0.6, num_views=2, pattern="block", block_size=2)
    g = torch.Generator(device="cuda").manual_seed(0)
    mask = masking(8, generator=g)
    assert mask.device.type == "cuda"
    assert (mask.sum(-1) == 120).all() and (mask.any(1).sum(-1) == 196).all()
    views = MaskedViews.from_mask(mask)
    x = torch.randn(8, 196, 4, device="cuda")
    naive = torch.stack([x[b, views.ids_keep[b, v]] for b in range(8) for v in range(2)])
    assert torch.equal(gather_tokens(x, views.ids_keep), naive)


def test_official_code_setting_covers_the_whole_image() -> None:
    # The official code: 14x14 grid, m = 0.75, two views, m_pred = 1.0.
    mask = DisjointMasking((14, 14), 0.75, num_views=2, pred_ratio=1.0)(32, generator=gen(0))
    assert (mask.sum(-1) == 147).all()
    assert (mask.any(1).sum(-1) == 196).all()
    # View 2 masks all 49 tokens visible in view 1 plus 98 of view 1's masked ones.
    assert ((~mask[:, 0] & mask[:, 1]).sum(-1) == 49).all()


def test_block_setting_masks_30_of_49_cells() -> None:
    masking = DisjointMasking((14, 14), 0.6, num_views=2, pattern="block", block_size=2)
    mask = masking(16, generator=gen(0))
    assert masking.num_masked == 120 and masking.num_predicted == 196
    assert (mask.sum(-1) == 120).all()
    cells = mask.view(16, 2, 7, 2, 7, 2)[:, :, :, 0, :, 0]
    assert (cells.flatten(2).sum(-1) == 30).all()


def test_pred_ratio_drives_the_union() -> None:
    masking = DisjointMasking((14, 14), 0.5, num_views=2, pred_ratio=0.75)
    mask = masking(16, generator=gen(0))
    assert masking.num_masked == 98 and masking.num_predicted == 147
    assert (mask.any(1).sum(-1) == 147).all()
    assert measured_pred_ratio(mask).item() == pytest.approx(0.75)


def test_unit_counts_hand_computed() -> None:
    # K = 4 at m = 0.25 on 8x8: n_corr = 16, n_pred = 64 -> new tokens 16, 16, 16.
    mask = DisjointMasking((8, 8), 0.25, num_views=4)(5, generator=gen(1))
    assert new_tokens_per_view(mask).tolist() == [[16, 16, 16, 16]] * 5
    # 10 new tokens over 3 later views: the remainder goes to the earlier views.
    mask = DisjointMasking((10, 10), 0.3, num_views=4, pred_ratio=0.4)(5, generator=gen(1))
    assert new_tokens_per_view(mask).tolist() == [[30, 4, 3, 3]] * 5
    # Saturation: once the union is the whole grid, later views add nothing new.
    mask = DisjointMasking((2, 2), 0.75, num_views=3, pred_ratio=1.0)(5, generator=gen(1))
    assert new_tokens_per_view(mask).tolist() == [[3, 1, 0]] * 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(grid_size=(0, 14), mask_ratio=0.5), "grid_size"),
        (dict(grid_size=(14, 14), mask_ratio=0.0), "mask_ratio"),
        (dict(grid_size=(14, 14), mask_ratio=1.0), "mask_ratio"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, num_views=0), "num_views"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, num_views=2, pred_ratio=1.2), "pred_ratio"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, num_views=2, pred_ratio=0.0), "pred_ratio"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, num_views=2, pred_ratio=0.4), "pred_ratio"),
        # K = 1 cannot raise the prediction rate above the corruption rate.
        (dict(grid_size=(14, 14), mask_ratio=0.5, num_views=1, pred_ratio=0.8), "num_views"),
        # Two views of 49 tokens cannot cover 0.9 of 196.
        (dict(grid_size=(14, 14), mask_ratio=0.25, num_views=2, pred_ratio=0.9), "num_views"),
        # 3 new tokens cannot give each of 4 later views a never-masked token.
        (dict(grid_size=(10, 10), mask_ratio=0.3, num_views=5, pred_ratio=0.33), "regulation"),
        # Equal ratios with K = 2: view 2 would add no new token.
        (dict(grid_size=(14, 14), mask_ratio=0.5, num_views=2, pred_ratio=0.5), "regulation"),
        # Rounding leaves no visible token (MAE's rule always masks at least one).
        (dict(grid_size=(1, 3), mask_ratio=0.7), "mask_ratio"),
        (dict(grid_size=(1, 1), mask_ratio=0.5), "mask_ratio"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, pattern="nope"), "pattern"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, pattern="block", block_size=4), "block_size"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, pattern="block", block_size=0), "block_size"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, pattern="random", block_size=2), "block_size"),
        (dict(grid_size=(14, 14), mask_ratio=0.5, pattern="rectangle", num_rects=0), "num_rects"),
    ],
)
def test_invalid_configurations_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DisjointMasking(**kwargs)


def test_unknown_pattern_keyword_fails_at_construction() -> None:
    with pytest.raises(TypeError):
        DisjointMasking((14, 14), 0.5, pattern="random", num_rects=3)


def test_repr_states_counts() -> None:
    text = repr(DisjointMasking((14, 14), 0.6, num_views=2, pattern="block", block_size=2))
    assert "num_masked=120" in text and "num_predicted=196" in text and "'block'" in text


def test_random_pattern_marginals_are_uniform() -> None:
    # Every token must be equally likely to be masked in each view and in the union.
    masking = DisjointMasking((14, 14), 0.75, num_views=2, pred_ratio=0.875)
    mask = masking(4000, generator=gen(0)).float()
    per_view = mask.mean(0)  # [K, L]; the std of each entry is about 0.007
    assert (per_view - 0.75).abs().max() < 0.04
    union = mask.amax(1).mean(0)
    assert (union - 0.875).abs().max() < 0.04


def test_block_pattern_cell_marginals_are_uniform() -> None:
    masking = DisjointMasking((8, 8), 0.5, num_views=2, pred_ratio=0.75, pattern="block", block_size=2)
    cells = masking(3000, generator=gen(0)).view(3000, 2, 4, 2, 4, 2)[:, :, :, 0, :, 0]
    assert (cells.float().mean(0) - 0.5).abs().max() < 0.05


def masked_neighbour_pairs(mask: torch.Tensor, h: int, w: int) -> float:
    grid = mask.reshape(-1, h, w)
    pairs = (grid[:, 1:] & grid[:, :-1]).sum() + (grid[:, :, 1:] & grid[:, :, :-1]).sum()
    return pairs.item() / grid.shape[0]


@pytest.mark.parametrize(("grid", "ratio"), [((14, 14), 0.4), ((8, 8), 0.5), ((16, 12), 0.3)])
def test_rectangle_pattern_is_spatially_clustered(grid: tuple[int, int], ratio: float) -> None:
    h, w = grid
    rect = DisjointMasking(grid, ratio, num_views=2, pattern="rectangle")(300, generator=gen(0))
    rand = DisjointMasking(grid, ratio, num_views=2)(300, generator=gen(0))
    assert masked_neighbour_pairs(rect[:, 0], h, w) > 1.4 * masked_neighbour_pairs(rand[:, 0], h, w)


def test_rectangle_scores_follow_rectangle_order() -> None:
    scores = rectangle_scores(64, (14, 14), num_rects=3, generator=gen(0))
    assert scores.shape == (64, 196) and scores.dtype == torch.float32
    assert (scores >= 0).all() and (scores < 4).all()
    # Rectangle 0 is never empty; on a 1x1 grid it covers the only token.
    assert ((scores < 1).sum(1) >= 1).all()
    full = rectangle_scores(8, (1, 1), num_rects=2, generator=gen(0))
    assert (full < 1).all()


def test_rectangle_shapes_are_rectangles() -> None:
    # With one rectangle, the tokens scoring below 1 form an axis-aligned rectangle whose
    # area is within the requested range (up to rounding) and aspect within [0.3, 1/0.3].
    scores = rectangle_scores(200, (16, 16), num_rects=1, min_tokens=10, max_area=40, generator=gen(0))
    inside = (scores < 1).view(200, 16, 16)
    rows, cols = inside.any(2), inside.any(1)
    height, width = rows.sum(1), cols.sum(1)
    assert torch.equal(inside, rows[:, :, None] & cols[:, None, :])
    area = (height * width).float()
    assert (area >= 5).all() and (area <= 55).all()
    aspect = height.float() / width.float()
    assert (aspect >= 0.2).all() and (aspect <= 5).all()


def test_block_scores_are_constant_on_cells_and_validate() -> None:
    scores = block_scores(4, (6, 4), block_size=2, generator=gen(0)).view(4, 3, 2, 2, 2)
    assert (scores == scores[:, :, :1, :, :1]).all()
    assert scores[:, :, 0, :, 0].flatten(1).unique(dim=1).shape[1] == 6
    with pytest.raises(ValueError, match=r"block_size=4.*6x4"):
        block_scores(1, (6, 4), block_size=4)


def test_random_scores_shape_and_range() -> None:
    scores = random_scores(3, (5, 7), generator=gen(0))
    assert scores.shape == (3, 35) and ((scores >= 0) & (scores < 1)).all()


@pytest.fixture
def scratch_patterns():
    """Register test-only patterns and remove them afterwards."""
    names: list[str] = []

    def add(name: str, fn):
        names.append(name)
        return register_pattern(name)(fn)

    yield add
    for name in names:
        PATTERNS.pop(name, None)


def test_tied_scores_never_split_a_cell(scratch_patterns) -> None:
    # A cell-based pattern whose scores all tie: selection on the cell grid must still
    # mask whole cells (a token-level argsort would split cells by index order).
    def constant(batch_size, grid_size, *, block_size=1, generator=None, device=None):
        return torch.zeros(batch_size, grid_size[0] * grid_size[1], device=device)

    scratch_patterns("constant-cells", constant)
    masking = DisjointMasking((8, 8), 0.5, num_views=2, pattern="constant-cells", block_size=4)
    mask = masking(2, generator=gen(0))
    cells = mask.view(2, 2, 2, 4, 2, 4)
    assert (cells == cells[:, :, :, :1, :, :1]).all()
    assert (mask.sum(-1) == 32).all() and (mask.any(1).sum(-1) == 64).all()
    with pytest.raises(ValueError, match="already registered"):
        register_pattern("constant-cells")(constant)


def test_each_view_uses_its_own_scores(scratch_patterns) -> None:
    # Deterministic pattern: view 1 prefers low token ids, view 2 high ones (rows are laid
    # out as b*K + k). On 2x5 at m = 0.4, pred 0.6: view 1 = {0,1,2,3}; view 2 takes its
    # 2 new tokens from {4..9} -> {8, 9} and 2 old ones from {0..3} -> {2, 3}.
    def ordered(batch_size, grid_size, *, generator=None, device=None):
        ids = torch.arange(grid_size[0] * grid_size[1], dtype=torch.float32, device=device)
        sign = 1.0 - 2.0 * (torch.arange(batch_size, device=device) % 2)
        return sign[:, None] * ids

    scratch_patterns("ordered", ordered)
    mask = DisjointMasking((2, 5), 0.4, num_views=2, pred_ratio=0.6, pattern="ordered")(3)
    view1 = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    view2 = [0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
    assert mask.int().tolist() == [[view1, view2]] * 3


def test_select_lowest_hand_computed() -> None:
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.6]])
    eligible = torch.tensor([[True, False, True, True], [True, True, True, True]])
    got = select_lowest(scores, eligible, 2)
    assert got.tolist() == [[True, False, False, True], [True, False, True, False]]
    assert not select_lowest(scores, eligible, 0).any()


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 5), length=st.integers(1, 30), seed=st.integers(0, 10**6), data=st.data())
def test_select_lowest_matches_naive(rows: int, length: int, seed: int, data: st.DataObject) -> None:
    g = gen(seed)
    scores = torch.rand(rows, length, generator=g)
    eligible = torch.rand(rows, length, generator=g) < 0.6
    count = data.draw(st.integers(0, int(eligible.sum(1).min())))
    got = select_lowest(scores, eligible, count)
    for r in range(rows):
        ids = [j for j in range(length) if eligible[r, j]]
        lowest = sorted(ids, key=lambda j: scores[r, j].item())[:count]
        assert sorted(torch.nonzero(got[r]).flatten().tolist()) == sorted(lowest)


@settings(max_examples=50, deadline=None)
@given(b=st.integers(1, 4), k=st.integers(1, 4), length=st.integers(1, 40), seed=st.integers(0, 10**6), data=st.data())
def test_masked_views_round_trip(b: int, k: int, length: int, seed: int, data: st.DataObject) -> None:
    n_mask = data.draw(st.integers(0, length))
    noise = torch.rand(b, k, length, generator=gen(seed))
    mask = noise.argsort(-1).argsort(-1) < n_mask  # n_mask random tokens per view
    views = MaskedViews.from_mask(mask)
    assert (views.batch_size, views.num_views) == (b, k)
    assert (views.num_visible, views.num_masked) == (length - n_mask, n_mask)
    assert views.ids_keep.dtype == torch.long and views.ids_restore.shape == (b, k, length)
    assert (views.ids_keep.diff(dim=-1) > 0).all() and (views.ids_masked.diff(dim=-1) > 0).all()
    assert not mask.gather(-1, views.ids_keep).any()
    assert mask.gather(-1, views.ids_masked).all()
    shuffled = torch.cat([views.ids_keep, views.ids_masked], dim=-1)
    restored = shuffled.gather(-1, views.ids_restore)
    assert torch.equal(restored, torch.arange(length).expand(b, k, length))


def test_masked_views_rejects_unequal_counts_and_bad_input() -> None:
    mask = torch.tensor([[[True, False, False], [True, True, False]]])
    with pytest.raises(ValueError, match="same number"):
        MaskedViews.from_mask(mask)
    with pytest.raises(ValueError, match="bool"):
        MaskedViews.from_mask(mask.int())
    with pytest.raises(ValueError, match="bool"):
        MaskedViews.from_mask(mask[0])


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 3), k=st.integers(1, 3), length=st.integers(1, 20), n=st.integers(0, 20), seed=st.integers(0, 10**6))
def test_gather_tokens_matches_naive(b: int, k: int, length: int, n: int, seed: int) -> None:
    g = gen(seed)
    x = torch.randn(b, length, 2, 3, generator=g, requires_grad=True)
    ids = torch.randint(0, length, (b, k, n), generator=g)
    got = gather_tokens(x, ids)
    naive = torch.stack([x[i, ids[i, v]] for i in range(b) for v in range(k)])
    assert got.shape == (b * k, n, 2, 3)
    assert torch.equal(got, naive)
    got.sum().backward()
    expected = torch.zeros(b, length).scatter_add_(1, ids.flatten(1), torch.ones(b, k * n))
    assert torch.equal(x.grad, expected[:, :, None, None].expand(b, length, 2, 3))


def test_gather_tokens_rejects_mismatched_batch() -> None:
    with pytest.raises(ValueError, match="ids"):
        gather_tokens(torch.zeros(2, 5, 3), torch.zeros(3, 1, 2, dtype=torch.long))


def test_measured_pred_ratio_hand_computed() -> None:
    mask = torch.tensor(
        [
            [[True, True, False, False], [False, True, True, False]],  # union 3 / 4
            [[True, False, False, False], [True, False, False, False]],  # union 1 / 4
        ]
    )
    assert measured_pred_ratio(mask).item() == pytest.approx(0.5)
