"""The paper's v1 networks, data generators and augmentation samplers, against the paper's code as documented
(eq_aug_dyn at e3d9c17d) and independent references (hand-written losses, rot90/roll, exact pmfs)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from scipy import stats
from torch import nn

from lightning_equi.actions import ImageAction
from lightning_equi.callbacks import HaarAugmentation
from lightning_equi.experiments.config import load_config
from lightning_equi.experiments.data import PAPER_CANVAS, paper_shapes, two_block_graphs
from lightning_equi.experiments.models import PaperPermNet, PaperRotNet, PaperTransNet
from lightning_equi.experiments.protocol import mode_callbacks, train_loader
from lightning_equi.experiments.runner import build_model, initial_state
from lightning_equi.experiments.samplers import BatchDrawAugmentation, paper_weights
from lightning_equi.groups import get_group


def _linear_shapes(model: nn.Module) -> list[tuple[tuple[int, ...], bool]]:
    return [(tuple(m.weight.shape), m.bias is not None) for m in model.modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------------------------------
# architecture


def test_built_in_configs_build_the_paper_v1_networks_at_full_size():
    """The layer shapes, norms and output non-linearities of PermutationAdjNet(ns=[1,32], n=10, ms=[64,32]),
    TranslationNet(ns=[1,32,32], n=14, ms=[32]) and RotationNet(ns=[1,32,32,16,2], n=14), built on the meta
    device (no memory for the 61M parameters)."""
    with torch.device("meta"):
        perm, trans, rot = (build_model(load_config(task)) for task in ("perm", "trans", "rot"))
    assert type(perm) is PaperPermNet and type(trans) is PaperTransNet and type(rot) is PaperRotNet
    assert _linear_shapes(perm) == [
        ((3200, 100), False),
        ((64, 3200), False),
        ((32, 64), False),
        ((1, 32), False),
    ]
    p = 196
    assert _linear_shapes(trans) == [((32 * p, p), False), ((32 * p, 32 * p), False), ((32, 32 * p), False),
                                     ((10, 32), False)]  # fmt: skip
    widths = [1, 32, 32, 16, 2]
    assert _linear_shapes(rot) == [((b * p, a * p), False) for a, b in zip(widths, widths[1:], strict=False)]
    for model, features in ((perm, 64), (trans, 32), (rot, 2)):
        norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))]
        assert len(norms) == 1 and isinstance(norms[0], nn.BatchNorm1d) and norms[0].affine
        assert norms[0].num_features == features
    # the only biases are BatchNorm's shift
    for model in (perm, trans, rot):
        assert [n for n, _ in model.named_parameters() if n.endswith("bias")] == ["norm.bias"]


def test_paper_networks_output_probabilities_and_use_the_paper_losses():
    torch.manual_seed(0)
    perm = PaperPermNet(channels=3, pooled=6, head=4)
    a, y = two_block_graphs(16, seed=1)
    p = perm(a)
    assert bool(((p >= 0) & (p <= 1)).all())  # the paper's large head init saturates some samples
    log = lambda t: t.log().clamp_min(-100)  # noqa: E731  BCELoss clamps its logs at -100
    expected = -(y * log(p) + (1 - y) * log(1 - p)).mean()  # BCELoss by hand
    torch.testing.assert_close(perm.loss(p, y), expected)

    trans = PaperTransNet(size=6, channels=2, pooled=4)
    x, labels = torch.rand(8, 1, 6, 6), torch.arange(8) % 10
    probs = trans(x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(8))
    double = -torch.log_softmax(probs, -1)[torch.arange(8), labels].mean()  # softmax applied twice
    torch.testing.assert_close(trans.loss(probs, labels), double)

    rot = PaperRotNet(size=6, channels=(2,))
    images, masks = paper_shapes(8, size=6, seed=0)
    out = rot(images)
    by_hand = sum(
        -(masks[:, k] * log(out[:, k]) + (1 - masks[:, k]) * log(1 - out[:, k])).mean() for k in range(2)
    )
    torch.testing.assert_close(rot.loss(out, masks), by_hand)


# --------------------------------------------------------------------------------------------------
# initialisation


def _std_close(w: torch.Tensor, std: float, rel: float) -> None:
    w = w.detach().double().flatten()
    assert abs(float(w.mean())) < 5 * std / math.sqrt(w.numel())
    assert float(w.std()) == pytest.approx(std, rel=rel)


def test_paper_init_statistics_and_the_projected_start():
    """The paper's ``reset``: N(0, 1/(n^2 c_out)) equivariant Perm layer, invariant layers constant over the
    points with N(0, 1/pooled), head N(0, (n/fan_in)^2); then the projection keeps dim E / dim L of the
    equivariant layer's energy: ||A0|| about 0.39 for Perm (15 * 32 of 10^4 * 32 dimensions)."""
    torch.manual_seed(0)
    net = PaperPermNet()
    _std_close(net.equivariant.weight, 1 / (10 * math.sqrt(32)), rel=0.02)
    blocks = net.invariant.weight.detach().reshape(64, 32, 100)
    assert torch.equal(blocks, blocks[..., :1].expand_as(blocks))  # constant over the 100 edges
    _std_close(blocks[..., 0], 1 / 8, rel=0.06)
    _std_close(net.head[0].weight, 10 / 64, rel=0.06)
    _std_close(net.head[2].weight, 10 / 32, rel=0.35)  # 32 values

    start = initial_state(load_config("perm"), seed=0)
    assert float(start["equivariant.weight"].norm()) == pytest.approx(10 * math.sqrt(480 / 320000), rel=0.1)
    assert float(start["invariant.weight"].norm()) == pytest.approx(math.sqrt(64 * 32 * 100 / 64), rel=0.06)

    torch.manual_seed(1)
    trans = PaperTransNet(size=6, channels=4, pooled=16)
    _std_close(trans.equivariant1.weight, 1 / 6, rel=0.06)
    _std_close(trans.equivariant2.weight, 1 / (6 * 2), rel=0.03)
    inv = trans.invariant.weight.detach().reshape(16, 4, 36)
    assert torch.equal(inv, inv[..., :1].expand_as(inv))
    _std_close(trans.head.weight, 6 / 16, rel=0.35)
    rot = PaperRotNet(size=6, channels=(4, 4))
    for layer, c_in in zip(rot.layers, (1, 4, 4), strict=True):
        _std_close(layer.weight, 1 / (6 * math.sqrt(c_in)), rel=0.1)


# --------------------------------------------------------------------------------------------------
# data


def test_stochastic_block_graphs_have_the_paper_distribution():
    """Edges: Binomial(2 * C(5, 2), 1/2) inside the blocks plus Binomial(25, 1/20) between them (chi-square on
    3000 graphs); connected about as often as in the paper's shipped graphs (47.4 % of 1000)."""
    a, y = two_block_graphs(3000, seed=11)
    edges = (a.sum((1, 2)) / 2).long()
    inside = stats.binom.pmf(range(21), 20, 0.5)
    between = stats.binom.pmf(range(26), 25, 0.05)
    pmf = torch.tensor([float(sum(inside[i] * between[k - i] for i in range(21) if 0 <= k - i <= 25))
                        for k in range(46)], dtype=torch.float64)  # fmt: skip
    counts = torch.bincount(edges, minlength=46).double()
    lo, hi = 5, 17  # bins with expected counts >= 5; the tails merged into the end bins
    observed = torch.cat([counts[: lo + 1].sum()[None], counts[lo + 1 : hi], counts[hi:].sum()[None]])
    expected = 3000 * torch.cat([pmf[: lo + 1].sum()[None], pmf[lo + 1 : hi], pmf[hi:].sum()[None]])
    assert float(expected.min()) >= 5
    assert (
        stats.chisquare(observed.numpy(), expected.numpy() * float(observed.sum() / expected.sum())).pvalue
        > 1e-3
    )
    assert float(y.mean()) == pytest.approx(0.474, abs=0.06)


def test_paper_shapes_reproduce_the_paper_data_quirks():
    x, m = paper_shapes(400, seed=3)
    full = m.flatten(2).amin(2) == 1  # masks that are all ones
    assert torch.equal(full.sum(1), torch.ones(400, dtype=torch.long))  # exactly one: the absent shape's
    present = torch.where(full[:, :1, None], m[:, 1], m[:, 0])
    assert bool((present.flatten(1).sum(1) > 0).all())
    assert float(x.min()) == pytest.approx((0x1F + 0x77 + 0xB4) / 765, abs=1e-3) and float(x.max()) <= 1
    # the drawn box is 450 of 640 pixels wide and 450 of 480 high: shapes are squeezed horizontally
    squeeze = (PAPER_CANVAS["right"] - PAPER_CANVAS["left"]) / (PAPER_CANVAS["bottom"] - PAPER_CANVAS["top"])
    assert squeeze == pytest.approx(0.75)
    rows = present.amax(2).sum(1).double()
    cols = present.amax(1).sum(1).double()
    assert float((cols / rows).mean()) == pytest.approx(0.75, abs=0.12)
    # a triangle has a vertex at angle 0 (pointing right): its leftmost mask column is its tallest
    triangles = present[full[:, 1]]
    for t in triangles[:50]:
        heights = t.sum(0)
        filled = heights.nonzero().flatten()
        assert heights[filled[0]] >= heights[filled[-1]]


# --------------------------------------------------------------------------------------------------
# the paper's samplers


def _paper_rotate(x: torch.Tensor, r: int, n: int) -> torch.Tensor:
    """The paper's ``Rotate.forward`` for a drawn ``r``, transcribed (the reshape's result discarded)."""
    b = x.shape[0]
    x.reshape(x.shape[0], x.shape[1], n, n)
    if r == 1:
        x = x.flip(-1).transpose(-1, -2)
    if r == 2:
        x = x.flip([-1, -2])
    if r == 3:
        x = x.transpose(-1, -2).flip(-2)
    return x.reshape(b, -1, n**2)


def test_paper_rot_weights_are_what_the_paper_code_applies():
    """r = randint(0, 4) (five values) through the transcribed Rotate on (B, 1, 196) inputs: each image comes
    back as one of our quarter turns (torch.rot90), with these probabilities."""
    n = 5
    image = torch.arange(n * n, dtype=torch.float32).reshape(1, 1, n, n)
    weights = torch.zeros(4, dtype=torch.float64)
    for r in range(5):
        out = _paper_rotate(image.flatten(2), r, n).reshape(1, 1, n, n)
        (k,) = [k for k in range(4) if torch.equal(out, torch.rot90(image, k, dims=(-2, -1)))]
        weights[k] += 1 / 5
    torch.testing.assert_close(paper_weights(get_group("C4")), weights)
    assert weights.tolist() == pytest.approx([0.4, 0.0, 0.6, 0.0])


def test_paper_samplers_draw_the_documented_distributions():
    """Chi-square with a fixed seed: C4 draws {0: 2/5, 180: 3/5}; torus shifts {0: 2/15, others 1/15} per
    axis; the element is read back from the transformed batch by rot90 / roll."""
    image = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    aug = BatchDrawAugmentation("C4", ImageAction("C4"), weights=paper_weights(get_group("C4")), seed=0)
    counts = torch.zeros(4)
    for _ in range(3000):
        (out,) = aug.transform((image.expand(2, -1, -1, -1),))
        assert torch.equal(out[0], out[1])  # one element per batch
        (k,) = [k for k in range(4) if torch.equal(out[:1], torch.rot90(image, k, dims=(-2, -1)))]
        counts[k] += 1
    assert counts[1] == 0 and counts[3] == 0
    assert stats.chisquare(counts[[0, 2]].numpy(), [1200, 1800]).pvalue > 1e-3

    n = 14
    torus = get_group(f"T{n}x{n}")
    grid = torch.arange(n * n, dtype=torch.float32).reshape(1, 1, n, n)
    aug = BatchDrawAugmentation(torus.name, ImageAction(torus), weights=paper_weights(torus), seed=1)
    shifts = torch.zeros(2, n)
    draws = 3000
    for _ in range(draws):
        (out,) = aug.transform((grid,))
        s0, s1 = [int(v) for v in torch.nonzero(out[0, 0] == 0)[0]]  # where pixel (0, 0) went
        assert torch.equal(out, torch.roll(grid, (s0, s1), dims=(-2, -1)))
        shifts[0, s0] += 1
        shifts[1, s1] += 1
    expected = torch.full((n,), 1 / (n + 1))
    expected[0] = 2 / (n + 1)
    for axis in range(2):
        assert stats.chisquare(shifts[axis].numpy(), (draws * expected).numpy()).pvalue > 1e-3
    # the paper's Python draw, for reference: randint(0, 14) includes 14, which rolls back to 0
    rng = random.Random(0)
    zero = sum(rng.randint(0, n) % n == 0 for _ in range(30000)) / 30000
    assert zero == pytest.approx(2 / 15, abs=0.01)


def test_sampler_option_sets_the_augmentation_and_the_passes():
    small = {"batch_size": 10, "aug_passes": 3}
    rot_cfg = load_config("rot", {**small, "sampler": "paper", "model": {"size": 6, "channels": [2]},
                                  "data": {"n_images": 20, "size": 6}})  # fmt: skip
    model = build_model(rot_cfg)
    (aug,) = [cb for cb in mode_callbacks(rot_cfg, "aug", model, 0) if isinstance(cb, HaarAugmentation)]
    assert type(aug) is BatchDrawAugmentation and aug.weights.tolist() == [0.4, 0.0, 0.6, 0.0]
    from lightning_equi.experiments.data import build_dataset

    loader, accumulate = train_loader(rot_cfg, build_dataset("rot", **rot_cfg["data"]), "aug", model)
    assert accumulate == 3 * 20 // 10  # passes over the repeated data, one draw per batch
    batch = load_config("rot", {**rot_cfg, "sampler": "batch"})
    (uniform,) = [cb for cb in mode_callbacks(batch, "aug", model, 0) if isinstance(cb, HaarAugmentation)]
    assert type(uniform) is BatchDrawAugmentation and uniform.weights is None
    perm_cfg = load_config("perm", {"sampler": "paper", "model": {"channels": 2, "pooled": 4, "head": 2}})
    perm = build_model(perm_cfg)
    (haar,) = [cb for cb in mode_callbacks(perm_cfg, "aug", perm, 0) if isinstance(cb, HaarAugmentation)]
    assert type(haar) is HaarAugmentation and haar.per_sample  # the paper's Perm: uniform per sample
    with pytest.raises(ValueError, match="sampler must be one of"):
        load_config("rot", {"sampler": "biased"})
    with pytest.raises(ValueError, match="weights must sum to 1"):
        BatchDrawAugmentation("C4", ImageAction("C4"), weights=[0.5, 0.5, 0.5, 0.0])


def test_optimizers():
    for name, cls, momentum in (("sgd", torch.optim.SGD, 0.0), ("momentum", torch.optim.SGD, 0.9)):
        opt = PaperPermNet(channels=2, pooled=4, head=2, optimizer=name).configure_optimizers()
        assert type(opt) is cls and opt.defaults["momentum"] == momentum
    assert (
        type(PaperPermNet(channels=2, pooled=4, head=2, optimizer="adam").configure_optimizers())
        is torch.optim.Adam
    )
    with pytest.raises(ValueError, match="optimizer must be one of"):
        PaperPermNet(optimizer="lbfgs")


# --------------------------------------------------------------------------------------------------
# appendix E.1


def test_dimension_table_matches_hand_counts_and_the_projector_trace():
    """dim E by hand: Maron et al.'s 15 maps per channel pair for S_n on pairs (n >= 4) and 2 invariant ones;
    a circulant per channel pair on a torus; C4 acts freely on the pixel pairs of an even grid (dim L / 4).
    And dim E = trace(Pi_E), summed over the basis of L, for a small layer."""
    from lightning_equi.experiments.studies import dimension_table

    rows = {(r["task"], r["layer"]): r for r in dimension_table(["perm"])}
    assert rows["perm", "equivariant.weight"]["dim_E"] == 15 * 32
    assert rows["perm", "invariant.weight"]["dim_E"] == 2 * 32 * 64
    assert rows["perm", "invariant.weight"]["dim_L"] == 64 * 32 * 100
    small = {"model": {"size": 6, "channels": [2]}}
    rot = dimension_table(["rot"], small)
    assert [(r["dim_E"], r["dim_L"]) for r in rot] == [
        (2 * 36 * 36 // 4, 2 * 36 * 36),
        (2 * 2 * 1296 // 4, 4 * 1296),
    ]
    trans = dimension_table(["trans"], {"model": {"size": 4, "channels": 2, "pooled": 3}})
    assert [r["dim_E"] for r in trans] == [2 * 16, 2 * 2 * 16, 3 * 2]

    model = build_model(load_config("rot", small))
    (first, *_) = model.symmetry_spec().bind(model).parameters
    basis = torch.eye(first.tensor.numel(), dtype=torch.float64).reshape(-1, *first.tensor.shape)
    trace = sum(float(first.projector.project(b.float()).double().flatten()[i]) for i, b in enumerate(basis))
    assert round(trace) == rot[0]["dim_E"]


# --------------------------------------------------------------------------------------------------
# appendix E.2


@pytest.mark.parametrize("group", ["T6", "T6x6", "C4"])
def test_groups_network_is_invariant_after_projection(group):
    """Each E.2 group: after projecting onto E the Trans network is invariant under the data action,
    checked against torch.roll / torch.rot90 directly."""
    from lightning_equi.experiments.models import PaperGroupsNet, RowShiftAction
    from lightning_equi.subspace import equivariant_init_

    torch.manual_seed(0)
    net = PaperGroupsNet(group=group, size=6, channels=2, pooled=3).eval()
    equivariant_init_(net)
    x = torch.rand(4, 1, 6, 6)
    moved = {"T6": torch.roll(x, 2, dims=-1), "T6x6": torch.roll(x, (1, 3), dims=(-2, -1))}
    moved["C4"] = torch.rot90(x, 1, dims=(-2, -1))
    with torch.no_grad():
        torch.testing.assert_close(net(moved[group]), net(x), rtol=1e-4, atol=1e-6)
    if group == "T6":
        act = RowShiftAction(6)
        torch.testing.assert_close(act(torch.tensor([[2]] * 4), x), moved["T6"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="group must be one of"):
        PaperGroupsNet(group="D4", size=6)


# --------------------------------------------------------------------------------------------------
# the studies, small


def test_sampler_study_paper_draws_make_aug_drift_like_nom(tmp_path):
    """The Rot answer at a tiny size: with uniform C4 draws aug stays far below nom, with the paper's C2
    draws it drifts nearly as far; the table's ratios are recomputed from the runs' own result files."""
    from lightning_equi.experiments.studies import sampler_study

    small = {"seeds": 1, "epochs": 8, "batch_size": 20, "aug_passes": 10, "threads": 1,
             "model": {"size": 6, "channels": [2]}, "data": {"n_images": 40, "size": 6}}  # fmt: skip
    outcome = sampler_study(tmp_path, "rot", small, samplers=("haar", "paper"), echo=lambda *_: None)
    rows = {r["setting"]: r for r in outcome["rows"]}

    def final(sampler, mode):
        folder = tmp_path / f"rot_{'haar' if mode == 'nom' else sampler}" / mode / "seed0"
        return json.loads((folder / "result.json").read_text())["distance_to_E"]

    for sampler in ("haar", "paper"):
        row = rows[f"aug sampler {sampler}"]
        assert row["nom_over_aug"] == pytest.approx(final(sampler, "nom") / final(sampler, "aug"))
    # measured: 8.6 (haar) and 1.3 (paper)
    assert rows["aug sampler paper"]["nom_over_aug"] < 2 and rows["aug sampler haar"]["nom_over_aug"] > 6
    assert outcome["figure"].exists() and outcome["table"].exists()


def test_practical_and_groups_studies_write_their_tables(tmp_path):
    from lightning_equi.experiments.studies import groups_study, plot_ratios, practical_study

    tiny = {"seeds": 1, "threads": 1, "protocol": "minibatch", "minibatch": {"epochs": 1},
            "model": {"channels": 2, "pooled": 4, "head": 2}, "data": {"n_graphs": 40}}  # fmt: skip
    settings = {"adam": {"minibatch": {"optimizer": "adam", "lr": 1e-3, "batch_size": 20, "aug_passes": 2}}}
    rows = practical_study(tmp_path / "p", "perm", settings, tiny, echo=lambda *_: None)
    assert [(r["task"], r["setting"], r["optimizer"], r["batch_size"], r["aug_passes"]) for r in rows] == [
        ("perm", "adam", "adam", 20, 2)
    ]
    assert plot_ratios(rows, tmp_path / "ratios.png", {"perm": 26.0}).exists()
    small = {"seeds": 1, "epochs": 1, "batch_size": 10, "aug_passes": 2, "threads": 1,
             "model": {"size": 6, "channels": 2, "pooled": 3}, "data": {"limit": 20, "size": 6}}  # fmt: skip
    rows = groups_study(tmp_path / "g", ["T6", "C4"], small, echo=lambda *_: None)
    assert [r["setting"] for r in rows] == ["T6", "C4"]
    assert rows[1]["dim_E_over_dim_L"] == pytest.approx(0.25)  # C4 acts freely on an even grid's pixel pairs
    assert (tmp_path / "g" / "figure.png").exists()
