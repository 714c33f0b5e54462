"""The augmented Hessian on E-perp (lightning_equi.stability) against independent references.

The references are built here without the package's operator: the orbit-augmented batch by hand
(``permute``, ``roll``, ``rot90`` over every element), the loss as a closure over the flat parameter
vector, the dense Hessian by ``torch.autograd.functional.hessian``, and an orthonormal basis of E-perp
(and of each isotypic component) from the eigenvectors of the projector matrix. Models have at most 3k
parameters and run in float64.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_equi.actions import GraphAction, ImageAction, SetAction
from lightning_equi.groups import get_group, grid_representation
from lightning_equi.stability import (
    FrozenRisk,
    ParameterSpace,
    dense_restricted_spectrum,
    lanczos,
    prediction_check,
    restricted_extremes,
    stability_spectrum,
    twirled_hvp,
)
from lightning_equi.subspace import SymmetrySpec

D = torch.float64

# ---- small versions of the paper's three networks (dense layers on flattened features) ---------------


class SmallPerm(nn.Module):
    """S_n on adjacency matrices: pairs -> channels x pairs -> invariant -> LayerNorm -> free head."""

    def __init__(self, n: int = 4, channels: int = 2, pooled: int = 4, head: int = 4) -> None:
        super().__init__()
        p = n * n
        self.equivariant = nn.Linear(p, channels * p, bias=False)
        self.invariant = nn.Linear(channels * p, pooled, bias=False)
        self.norm = nn.LayerNorm(pooled, elementwise_affine=False)
        self.head = nn.Sequential(nn.Linear(pooled, head), nn.LeakyReLU(), nn.Linear(head, 1))
        self.group = f"S{n}"

    def forward(self, a: Tensor) -> Tensor:
        x = F.leaky_relu(self.equivariant((a - 0.5).flatten(1)))
        return self.head(self.norm(F.leaky_relu(self.invariant(x)))).squeeze(-1)

    def spec(self) -> SymmetrySpec:
        return (
            SymmetrySpec(self.group)
            .layer(self.equivariant, "pairs", "pairs")
            .layer(self.invariant, "pairs", "trivial")
            .free(self.head)
        )


class SmallTrans(nn.Module):
    """Torus translations: two translation-equivariant dense layers, an invariant one, a free head."""

    def __init__(self, size: int = 3, channels: int = 2, pooled: int = 2, classes: int = 3) -> None:
        super().__init__()
        p = size * size
        self.equivariant1 = nn.Linear(p, channels * p, bias=False)
        self.equivariant2 = nn.Linear(channels * p, channels * p, bias=False)
        self.invariant = nn.Linear(channels * p, pooled, bias=False)
        self.head = nn.Linear(pooled, classes)
        self.group = f"T{size}x{size}"

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.equivariant1((x - 0.5).flatten(1)))
        h = F.leaky_relu(self.equivariant2(h))
        return self.head(torch.tanh(self.invariant(h)))

    def spec(self) -> SymmetrySpec:
        return (
            SymmetrySpec(self.group)
            .layer(self.equivariant1, "regular", "regular")
            .layer(self.equivariant2, "regular", "regular")
            .layer(self.invariant, "regular", "trivial")
            .free(self.head)
        )


class SmallRot(nn.Module):
    """C4 rotating the pixel grid of every channel; BatchNorm (free, evaluated on running statistics)."""

    def __init__(self, size: int = 3, channels: int = 2) -> None:
        super().__init__()
        p = size * size
        self.size = size
        self.layers = nn.ModuleList(
            [nn.Linear(p, channels * p, bias=False), nn.Linear(channels * p, 2 * p, bias=False)]
        )
        self.norm = nn.BatchNorm1d(2)
        with torch.no_grad():  # running statistics that are not the identity map
            self.norm.running_mean.uniform_(-0.2, 0.2)
            self.norm.running_var.uniform_(0.5, 1.5)
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x: Tensor) -> Tensor:
        h = (x - 0.5).flatten(1)
        for layer in self.layers:
            h = F.leaky_relu(layer(h))
        return self.norm(h.reshape(h.shape[0], 2, -1)).reshape(h.shape[0], 2, self.size, self.size)

    def spec(self) -> SymmetrySpec:
        grid = grid_representation(get_group("C4"), (self.size, self.size))
        return SymmetrySpec("C4").layers(nn.Linear, fields=grid).free(self.norm)


def _bce_masks(out: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(out, target, reduction="none").mean(dim=(0, 2, 3)).sum()


def _problem(task: str, batch: int = 6):
    """``(model, loss, (x, y), actions, hand-made orbit of the batch)`` in float64."""
    gen = torch.Generator().manual_seed(1)
    if task == "perm":
        model, n = SmallPerm().double(), 4
        a = (torch.rand(batch, n, n, generator=gen) < 0.5).double()
        a = torch.triu(a, 1) + torch.triu(a, 1).transpose(1, 2)
        y = torch.randint(2, (batch,), generator=gen).double()
        perms = [torch.tensor(p) for p in itertools.permutations(range(n))]
        orbit = (torch.cat([a[:, p][:, :, p] for p in perms]), y.repeat(len(perms)))
        return model, F.binary_cross_entropy_with_logits, (a, y), [GraphAction(model.group), None], orbit
    if task == "trans":
        model, s = SmallTrans().double(), 3
        x = torch.rand(batch, 1, s, s, generator=gen, dtype=D)
        y = torch.randint(3, (batch,), generator=gen)
        shifts = list(itertools.product(range(s), range(s)))
        orbit = (torch.cat([torch.roll(x, sh, dims=(-2, -1)) for sh in shifts]), y.repeat(len(shifts)))
        return model, F.cross_entropy, (x, y), [ImageAction(model.group), None], orbit
    model, s = SmallRot().double(), 3
    x = torch.rand(batch, 1, s, s, generator=gen, dtype=D)
    y = (torch.rand(batch, 2, s, s, generator=gen) < 0.5).double()
    orbit = (
        torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]),
        torch.cat([torch.rot90(y, k, dims=(-2, -1)) for k in range(4)]),
    )
    return model, _bce_masks, (x, y), [ImageAction("C4"), ImageAction("C4")], orbit


def _reference_hessian(model: nn.Module, loss, batch) -> tuple[Tensor, Tensor]:
    """The flat parameters and the dense Hessian of ``loss`` on ``batch``, by autograd, in eval mode."""
    named = [(n, p) for n, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def f(t: Tensor) -> Tensor:
        params, i = {}, 0
        for n, p in named:
            params[n] = t[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        return loss(torch.func.functional_call(model, params, (batch[0],)), batch[1])

    model.eval()
    hessian = torch.autograd.functional.hessian(f, theta)
    model.train()
    return theta, (hessian + hessian.T) / 2


def _projector_matrix(model: nn.Module, projection) -> Tensor:
    """The dense matrix of Pi_E on the flat parameters: each entry's projector, the identity on free ones."""
    by_id = {id(e.tensor): e.projector for e in projection.parameters}
    blocks = []
    for _, p in model.named_parameters():
        eye = torch.eye(p.numel(), dtype=D)
        proj = by_id.get(id(p))
        blocks.append(
            eye
            if proj is None
            else torch.stack([proj.project(c.reshape(p.shape)).reshape(-1) for c in eye], 1)
        )
    return torch.block_diag(*blocks)


def _basis(pmat: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((pmat + pmat.T) / 2)
    return vectors[:, values > 0.5]


TASKS = ["perm", "trans", "rot"]


def _in_E(model: nn.Module, loss, batch, actions) -> tuple[ParameterSpace, FrozenRisk, Tensor]:
    """The model projected onto E, its space, its orbit-augmented risk and its parameters."""
    projection = model.spec().bind(model)
    projection.project_parameters_()
    space = ParameterSpace(model, projection)
    return space, FrozenRisk(space, loss, batch, actions), space.vector()


@pytest.mark.parametrize("in_E", [False, True])
@pytest.mark.parametrize("task", TASKS)
def test_lanczos_extremes_on_E_perp_match_dense_eigh_within_60_hvps(task: str, in_E: bool) -> None:
    model, loss, batch, actions, orbit = _problem(task)
    projection = model.spec().bind(model)
    if in_E:
        projection.project_parameters_()
    space = ParameterSpace(model, projection)
    assert space.numel <= 3000
    _, hessian = _reference_hessian(model, loss, orbit)
    for part, pmat in (
        ("perp", torch.eye(space.numel, dtype=D) - _projector_matrix(model, projection)),
        ("E", _projector_matrix(model, projection)),
    ):
        q = _basis(pmat)
        assert q.shape[1] == (space.dim_perp if part == "perp" else space.dim_E)
        ref = torch.linalg.eigvalsh(q.T @ hessian @ q)
        risk = FrozenRisk(space, loss, batch, actions, augmentation="orbit")
        out = restricted_extremes(risk, part, steps=60, tol=1e-10)
        scale = float(ref.abs().max())
        assert out.products <= 60
        assert abs(out.lambda_min - float(ref[0])) <= 1e-8 * scale, (part, out.lambda_min, float(ref[0]))
        assert abs(out.lambda_max - float(ref[-1])) <= 1e-8 * scale, (part, out.lambda_max, float(ref[-1]))
        # the Ritz vector is an eigenvector of the restricted operator, inside the part
        project = space.projector(part)
        u = out.vector_min
        assert torch.allclose(project(u), u, atol=1e-12)
        residual = project(risk.hvp(space.vector(), u)) - out.lambda_min * u
        assert float(residual.norm()) <= 1e-6 * scale
    # the library's own dense reference agrees with the hand-built one
    mine = dense_restricted_spectrum(FrozenRisk(space, loss, batch, actions), "perp")
    q = _basis(torch.eye(space.numel, dtype=D) - _projector_matrix(model, projection))
    assert torch.allclose(
        mine, torch.linalg.eigvalsh(q.T @ hessian @ q), atol=1e-10 * float(mine.abs().max())
    )


def test_without_reprojection_E_shows_up_as_zero_ritz_values() -> None:
    # why every Lanczos vector is projected: started in E-perp but never re-projected, rounding grows into E
    # (the operator is not block diagonal off E), and E's part of the spectrum leaks into the Ritz values
    model, loss, batch, actions, _ = _problem("perm")
    space = ParameterSpace(model, model.spec().bind(model))
    risk = FrozenRisk(space, loss, batch, actions)
    theta = space.vector()
    once = lanczos(
        lambda v: risk.hvp(theta, v), None, space.project_perp(torch.randn(space.numel, dtype=D)), steps=60
    )
    proper = restricted_extremes(risk, "perp", theta, steps=60)
    ref = dense_restricted_spectrum(risk, "perp")
    assert abs(proper.lambda_max - float(ref[-1])) < 1e-8 * float(ref.abs().max())
    whole = torch.linalg.eigvalsh(risk.hessian(theta))
    assert abs(once.lambda_max - float(whole[-1])) < 1e-6 * float(whole.abs().max())  # the whole space's
    assert once.lambda_max > float(ref[-1]) * (1 + 1e-3)


def test_lanczos_on_a_random_matrix_and_subspace_matches_eigh() -> None:
    n, k = 200, 70
    a = torch.randn(n, n, dtype=D)
    a = (a + a.T) / 2
    q, _ = torch.linalg.qr(torch.randn(n, k, dtype=D))
    ref = torch.linalg.eigvalsh(q.T @ a @ q)
    out = lanczos(lambda v: a @ v, lambda v: q @ (q.T @ v), torch.randn(n, dtype=D), steps=k, tol=1e-12)
    assert out.converged and out.products <= k
    assert abs(out.lambda_min - float(ref[0])) < 1e-10 and abs(out.lambda_max - float(ref[-1])) < 1e-10
    with pytest.raises(ValueError, match="projected start vector is zero"):
        lanczos(lambda v: a @ v, lambda v: v * 0, torch.randn(n, dtype=D))


@pytest.mark.parametrize("task", TASKS)
def test_twirl_of_the_nominal_hessian_is_the_orbit_hessian_at_E(task: str) -> None:
    # Proposition 2: at A in E, H_aug = 1/|G| sum_g rho_bar(g)^T H_nom rho_bar(g); not so off E
    model, loss, batch, actions, _ = _problem(task, batch=3)
    projection = model.spec().bind(model)
    space = ParameterSpace(model, projection)
    orbit = FrozenRisk(space, loss, batch, actions, augmentation="orbit")
    nominal = FrozenRisk(space, loss, batch, augmentation="nominal")
    v = torch.randn(space.numel, dtype=D)
    off = space.vector()
    gap_off = (orbit.hvp(off, v) - twirled_hvp(nominal, off, v)).norm() / orbit.hvp(off, v).norm()
    projection.project_parameters_()
    at = space.vector()
    gap_at = (orbit.hvp(at, v) - twirled_hvp(nominal, at, v)).norm() / orbit.hvp(at, v).norm()
    assert gap_at < 1e-12
    assert gap_off > 1e-4


def test_at_E_with_the_full_orbit_the_hessian_is_block_diagonal_and_the_gradient_in_E() -> None:
    model, loss, batch, actions, _ = _problem("rot")
    space, risk, theta = _in_E(model, loss, batch, actions)
    g = risk.gradient(theta)
    assert space.project_perp(g).norm() < 1e-13 * g.norm()  # Corollary 1
    spectrum = stability_spectrum(risk, theta)
    assert spectrum["coupling"] < 1e-12
    assert spectrum["gamma_crit"] == max(0.0, -spectrum["lambda_min_perp"])
    sampled = FrozenRisk(space, loss, batch, actions, augmentation=1, seed=0)
    assert (
        stability_spectrum(sampled, theta, steps=20)["coupling"] > 1e-6
    )  # one draw per sample: not invariant


@pytest.mark.parametrize("task", ["trans", "rot"])
def test_isotypic_components_split_E_perp_and_their_extremes_match_eigh(task: str) -> None:
    model, loss, batch, actions, orbit = _problem(task)
    projection = model.spec().bind(model)
    projection.project_parameters_()
    space = ParameterSpace(model, projection)
    components = space.isotypic_components()
    assert len(components) == (3 if task == "rot" else 5)  # C4: k=0, 1 (with 3), 2; T3x3: 1 + 8/2
    mats = {
        c.label: torch.stack([space.project_isotypic(e, c) for e in torch.eye(space.numel, dtype=D)], 1)
        for c in components
    }
    total = sum(mats.values())
    assert torch.allclose(total, torch.eye(space.numel, dtype=D), atol=1e-12)
    trivial = next(c for c in components if c.trivial)
    assert torch.allclose(mats[trivial.label], _projector_matrix(model, projection), atol=1e-12)
    for a, b in itertools.combinations(mats.values(), 2):
        assert (a @ b).abs().max() < 1e-12
    _, hessian = _reference_hessian(model, loss, orbit)
    risk = FrozenRisk(space, loss, batch, actions)
    lows = []
    for c in components:
        if c.trivial:
            continue
        q = _basis(mats[c.label])
        assert torch.allclose(hessian @ q, q @ (q.T @ hessian @ q), atol=1e-10)  # H preserves the component
        ref = torch.linalg.eigvalsh(q.T @ hessian @ q)
        out = restricted_extremes(risk, c.label, steps=60, tol=1e-10)
        assert abs(out.lambda_min - float(ref[0])) <= 1e-8 * float(ref.abs().max())
        assert abs(out.lambda_max - float(ref[-1])) <= 1e-8 * float(ref.abs().max())
        lows.append(out.lambda_min)
    whole = stability_spectrum(risk, isotypic=True, tol=1e-10)
    assert abs(min(lows) - whole["lambda_min_perp"]) < 1e-8 * abs(whole["lambda_max_perp"])
    # one complex character per element of G: a real component holds one (weight 1 at the identity) or two
    assert sum(float(c.weights[0]) for c in components) == space.group.order


@pytest.mark.parametrize("which", ["min", "max"])
def test_augmented_descent_from_E_plus_eps_u_grows_as_one_minus_eta_lambda(which: str) -> None:
    # the prediction check of the linearisation (eq. 26-27): d_{k+1} = (1 - eta lambda) d_k along u, at the
    # end A_T of an equi trajectory (projected gradient descent on the same frozen risk): far from it the
    # Hessian changes too fast along E for a fixed linearisation to hold
    model, loss, batch, actions, _ = _problem("perm")
    space, risk, theta = _in_E(model, loss, batch, actions)
    for _ in range(100):
        theta = theta - 0.1 * space.project_E(risk.gradient(theta))
    spectrum = stability_spectrum(risk, theta, tol=1e-10)
    assert spectrum["lambda_min_perp"] < 0  # E is unstable here: a direction across E grows
    out = restricted_extremes(risk, "perp", theta, steps=60, tol=1e-10)
    lam, u = (out.lambda_min, out.vector_min) if which == "min" else (out.lambda_max, out.vector_max)
    lr = 0.5 / max(spectrum["lambda_max_E"], spectrum["lambda_max_perp"])  # stable along E too
    check = prediction_check(risk, u, lam, lr, steps=15, eps=1e-6, theta=theta)
    assert check.rate_error < 0.2, check
    assert (check.observed > 1) == (lam < 0)
    # and a wrong eigenvalue would fail it
    assert abs((check.observed - 1) - (-lr * 2 * lam)) / abs(lr * 2 * lam) > 0.2


def test_hvp_modes_agree_chunks_sum_and_the_operator_is_frozen() -> None:
    model, loss, batch, actions, _ = _problem("rot")
    model.add_module("drop", nn.Dropout(0.5))  # unused in forward but eval must switch it off anyway
    model.train()
    space = ParameterSpace(model, model.spec().bind(model))
    theta, v = space.vector(), torch.randn(space.numel, dtype=D)
    whole = FrozenRisk(space, loss, batch, actions)
    chunked = FrozenRisk(space, loss, batch, actions, chunk=5)
    assert len(chunked.chunks) == 5  # 24 samples
    a, b = whole.hvp(theta, v, mode="forward"), whole.hvp(theta, v, mode="reverse")
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    assert torch.allclose(chunked.hvp(theta, v), a, rtol=1e-10, atol=1e-13)
    assert torch.equal(whole.hvp(theta, v), a)  # the same matrix at every call
    assert model.training and model.norm.training  # modes restored
    s1 = FrozenRisk(space, loss, batch, actions, augmentation=3, seed=7)
    s2 = FrozenRisk(space, loss, batch, actions, augmentation=3, seed=7)
    assert s1.samples == 18 and torch.equal(s1.batch[0], s2.batch[0])
    assert torch.equal(s1.hvp(theta, v), s2.hvp(theta, v))


def test_mse_loss_falls_back_to_double_backward_with_a_warning() -> None:
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh(), nn.Linear(3, 1)).double()
    spec = SymmetrySpec("S3").layer("0", "standard", "standard").layer("2", "standard", "trivial")
    space = ParameterSpace(net, spec.bind(net))
    x, y = torch.randn(4, 3, dtype=D), torch.randn(4, 1, dtype=D)
    risk = FrozenRisk(space, F.mse_loss, (x, y), [SetAction("S3"), None])
    theta, v = space.vector(), torch.randn(space.numel, dtype=D)
    with pytest.raises(RuntimeError):
        risk.hvp(theta, v, mode="forward")
    with pytest.warns(UserWarning, match="mode='reverse'"):
        hv = risk.hvp(theta, v)
    square = FrozenRisk(space, lambda o, t: ((o - t) ** 2).mean(), (x, y), [SetAction("S3"), None])
    assert torch.allclose(hv, square.hvp(theta, v, mode="forward"), rtol=1e-10)


def test_refusals_name_the_option() -> None:
    model, loss, batch, actions, _ = _problem("rot")
    projection = model.spec().bind(model)
    space = ParameterSpace(model, projection)
    with pytest.raises(ValueError, match="needs the actions"):
        FrozenRisk(space, loss, batch, None, augmentation="orbit")
    with pytest.raises(ValueError, match="'nominal', 'orbit' or an int"):
        FrozenRisk(space, loss, batch, actions, augmentation=0)
    summed = lambda o, t: F.binary_cross_entropy_with_logits(o, t, reduction="sum")  # noqa: E731
    with pytest.raises(ValueError, match="not a mean over independent samples"):
        FrozenRisk(space, summed, batch, actions, chunk=4)
    with pytest.raises(ValueError, match="unknown part 'k=7'"):
        space.projector("k=7")
    other = SmallRot().double()
    with pytest.raises(ValueError, match="not a trainable parameter of the model"):
        ParameterSpace(other, projection)
    perm = SmallPerm().double()
    with pytest.raises(ValueError, match="finite abelian groups"):
        ParameterSpace(perm, perm.spec().bind(perm)).isotypic_components()
    so2 = nn.Sequential(nn.Linear(2, 2, bias=False)).double()
    so2_space = ParameterSpace(so2, SymmetrySpec("SO2").layer("0", "standard", "standard").bind(so2))
    with pytest.raises(ValueError, match="needs a finite group"):
        FrozenRisk(so2_space, loss, batch, actions, augmentation="orbit")


def test_the_readme_example_of_the_core_runs() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("## Is E stable?") :]
    block = section[section.index("```python\nimport torch") + len("```python\n") :]
    scope: dict = {}
    exec(compile(block[: block.index("```")], "README.md", "exec"), scope)  # noqa: S102
    spectrum = scope["spectrum"]
    assert spectrum["gamma_crit"] == max(0.0, -spectrum["lambda_min_perp"])
    assert {"lambda_min/k=1", "lambda_min/k=2"} <= set(spectrum)
