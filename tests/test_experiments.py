"""The paper's experiments at small sizes: data, models, the three-mode runner, the figure and the table."""

from __future__ import annotations

import csv
import gzip
import io
import json
import struct
from collections import deque
from pathlib import Path

import pytest
import torch

from lightning_equi import demo
from lightning_equi.experiments.config import load_config
from lightning_equi.experiments.data import (
    digits,
    is_connected,
    load_mnist,
    read_idx,
    shapes,
    two_block_graphs,
)
from lightning_equi.experiments.figure import STYLE, median_curve
from lightning_equi.experiments.models import PermNet, RotNet, TransNet
from lightning_equi.experiments.runner import main, run_comparison
from lightning_equi.subspace import equivariant_init_

PAPER_LR = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One BLAS thread: the runs are small, and threads fight on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compare(tmp: Path, task: str, **overrides) -> dict:
    config = {"seeds": [0], "out_dir": str(tmp), "progress_bar": False, "threads": 1, **overrides}
    outcome = run_comparison(load_config(task, config), echo=lambda *_: None)
    assert outcome["failed"] == []
    return outcome


def _trajectories(outcome: dict) -> dict[str, dict]:
    root = outcome["root"]
    return {
        m: json.loads((root / m / "seed0" / "trajectory.json").read_text()) for m in ("nom", "aug", "equi")
    }


@pytest.fixture(scope="module")
def perm(tmp_path_factory) -> dict:
    """Perm at the paper's protocol and learning rate (25 augmented passes per step), reduced in size."""
    return _compare(
        tmp_path_factory.mktemp("perm"),
        "perm",
        epochs=20,
        lr=PAPER_LR,
        aug_passes=25,
        batch_size=200,
        model={"channels": 8, "pooled": 16, "head": 8},
        data={"n_graphs": 200},
    )


@pytest.fixture(scope="module")
def trans(tmp_path_factory) -> dict:
    """Trans on 200 digits at the paper's protocol and learning rate, reduced in width."""
    return _compare(
        tmp_path_factory.mktemp("trans"),
        "trans",
        epochs=12,
        lr=PAPER_LR,
        aug_passes=25,
        batch_size=200,
        model={"channels": 4, "pooled": 8},
        data={"limit": 200},
    )


@pytest.fixture(scope="module")
def rot_orbit(tmp_path_factory) -> dict:
    """Rot on 6 x 6 images with exact full-orbit augmentation (all four quarter turns of every sample)."""
    return _compare(
        tmp_path_factory.mktemp("rot"),
        "rot",
        epochs=5,
        lr=1e-2,
        orbit=True,
        batch_size=32,
        model={"size": 6, "channels": [4, 4, 2]},
        data={"n_images": 64, "size": 6},
    )


# --------------------------------------------------------------------------------------------------
# training dynamics


@pytest.mark.parametrize("name", ["perm", "trans", "rot_orbit"])
def test_equi_stays_in_E_and_nom_leaves_it(name, request):
    t = _trajectories(request.getfixturevalue(name))
    assert max(t["equi"]["relative_distance_to_E"]) < 1e-6
    assert t["equi"]["distance_from_start"][-1] > 0  # equi did train
    nom = t["nom"]["distance_to_E"]
    assert t["nom"]["relative_distance_to_E"][0] < 1e-9  # the equivariant start
    assert all(b > a for a, b in zip(nom, nom[1:], strict=False))  # grows every epoch
    assert t["nom"]["relative_distance_to_E"][-1] > 1e-6


def test_exact_orbit_augmentation_stays_in_E(rot_orbit):
    """Corollary 1: from an equivariant start, the exactly augmented gradient lies in E, so aug stays in E
    (to float precision) while nom leaves it; and (Proposition 1) aug then follows equi's trajectory."""
    t = _trajectories(rot_orbit)
    assert max(t["aug"]["relative_distance_to_E"]) < 1e-6
    assert t["nom"]["relative_distance_to_E"][-1] > 1e3 * max(t["aug"]["relative_distance_to_E"])
    torch.testing.assert_close(
        torch.tensor(t["aug"]["distance_from_start"]),
        torch.tensor(t["equi"]["distance_from_start"]),
        rtol=1e-4,
        atol=0,
    )


@pytest.mark.parametrize("name, factor", [("perm", 5), ("trans", 10)])
def test_sampled_augmentation_stays_far_closer_to_E_than_nom(name, factor, request):
    """The paper's observation on Perm and Trans: aug drifts away from E far slower than nom.

    Nom's drift is systematic, aug's is the noise of the sampled augmented gradient (a random walk,
    shrinking with the passes averaged), so it is checked over the second half of the training. On the
    paper's Perm network at this reduced size nom's drift bends (BatchNorm, the large head init), and the
    ratio there is about 8 to 11 (checked at 5).
    """
    t = _trajectories(request.getfixturevalue(name))
    aug, nom = t["aug"]["distance_to_E"], t["nom"]["distance_to_E"]
    assert aug[-1] > 0  # sampled augmentation does leave E ...
    half = len(aug) // 2
    assert all(factor * a < n for a, n in zip(aug[half:], nom[half:], strict=True))  # ... far slower


# --------------------------------------------------------------------------------------------------
# the figure and the table


def test_figure_and_table_hold_the_runs(rot_orbit):
    root = rot_orbit["root"]
    results = {
        m: json.loads((root / m / "seed0" / "result.json").read_text()) for m in ("nom", "aug", "equi")
    }
    with open(rot_orbit["table_csv"], newline="") as f:
        rows = {row["mode"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["nom", "aug", "equi"]
    table_json = {row["mode"]: row for row in json.loads(rot_orbit["table_json"].read_text())}
    for mode, result in results.items():
        assert rows[mode]["runs"] == "1" and rows[mode]["failed"] == "0"
        for metric in ("distance_to_E", "distance_from_start", "loss", "accuracy", "equivariance_error"):
            assert float(rows[mode][f"{metric}_median"]) == pytest.approx(result[metric], rel=1e-12)
            assert table_json[mode][f"{metric}_median"] == pytest.approx(result[metric], rel=1e-12)
    assert results["equi"]["equivariance_error"] < 1e-5 < results["nom"]["equivariance_error"]

    import matplotlib.colors as mcolors
    import matplotlib.image as mpimg

    series = json.loads((root / "figure.json").read_text())
    for mode in ("nom", "aug", "equi"):
        t = json.loads((root / mode / "seed0" / "trajectory.json").read_text())
        assert series[mode]["median_x"] == pytest.approx(t["distance_from_start"])
        assert series[mode]["median_y"] == pytest.approx(t["distance_to_E"])
        assert series[mode]["runs"] == 1
    image = mpimg.imread(rot_orbit["figure"])[..., :3]
    assert image.shape[0] > 300 and image.shape[1] > 600
    for mode in ("nom", "aug", "equi"):  # every mode's bold median line is drawn in its colour
        colour = torch.tensor(mcolors.to_rgb(STYLE[mode]["color"]))
        close = (torch.from_numpy(image.copy()) - colour).abs().amax(-1) < 0.02
        assert int(close.sum()) > 50, mode


def test_median_curve_is_per_epoch_median():
    runs = [
        {"trajectory": {"distance_from_start": [0, x], "distance_to_E": [0, 10 * x]}} for x in (1.0, 5.0, 2.0)
    ]
    assert median_curve(runs) == ([0.0, 2.0], [0.0, 20.0])
    assert median_curve(runs[:2]) == ([0.0, 3.0], [0.0, 30.0])  # two runs: the mean of the middle two


def test_rerun_skips_finished_runs_and_failures_are_reported(tmp_path):
    small = [
        "--set",
        "model.channels=2",
        "--set",
        "model.pooled=4",
        "--set",
        "model.head=2",
        "--set",
        "threads=1",
    ]
    small += ["--set", "data.n_graphs=20", "--set", "progress_bar=false", "--epochs", "1", "--seeds", "1"]
    out = ["--out-dir", str(tmp_path)]
    assert main(["perm", *out, "--set", "batch_size=7", *small]) == 1  # 7 does not divide 20: every run fails
    for mode in ("nom", "aug", "equi"):
        result = json.loads((tmp_path / "perm" / mode / "seed0" / "result.json").read_text())
        assert result["status"] == "failed" and "batch_size 7" in result["error"]
        assert "Traceback" in (tmp_path / "perm" / mode / "seed0" / "error.txt").read_text()
    rows = json.loads((tmp_path / "perm" / "table.json").read_text())
    assert [(r["mode"], r["runs"], r["failed"]) for r in rows] == [
        ("nom", 1, 1),
        ("aug", 1, 1),
        ("equi", 1, 1),
    ]

    assert main(["perm", *out, "--set", "batch_size=10", *small]) == 0  # retried, now finished
    assert not (tmp_path / "perm" / "nom" / "seed0" / "error.txt").exists()
    stamps = {
        m: (tmp_path / "perm" / m / "seed0" / "result.json").stat().st_mtime_ns
        for m in ("nom", "aug", "equi")
    }
    lines: list[str] = []
    config = load_config("perm", {"out_dir": str(tmp_path), "seeds": 1, "epochs": 1, "batch_size": 10})
    run_comparison(config, echo=lines.append)
    assert sum("finished before, skipped" in line for line in lines) == 3
    assert stamps == {m: (tmp_path / "perm" / m / "seed0" / "result.json").stat().st_mtime_ns for m in stamps}


@pytest.mark.parametrize("protocol, steps", [("full", 2), ("minibatch", 8)])
def test_protocols_take_one_step_per_epoch_or_per_batch(tmp_path, protocol, steps):
    small = {"model": {"channels": 2, "pooled": 4, "head": 2}, "data": {"n_graphs": 40}, "batch_size": 10}
    minibatch = {"batch_size": 10, "aug_passes": 3, "lr": 1e-2}
    outcome = _compare(
        tmp_path, "perm", protocol=protocol, epochs=2, aug_passes=3, minibatch=minibatch, **small
    )
    for mode in ("nom", "aug", "equi"):
        result = json.loads((outcome["root"] / mode / "seed0" / "result.json").read_text())
        assert result["steps"] == steps, mode
        assert len(_trajectories(outcome)[mode]["distance_to_E"]) == 3  # the start and two epochs


def test_demo_runs_and_says_where_everything_is(tmp_path, capsys):
    argv = ["--out-dir", str(tmp_path), "--seeds", "1", "--epochs", "1", "--set", "data.n_images=20"]
    assert demo.main([*argv, "--set", "batch_size=10", "--set", "threads=1"]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "demo-rot"
    assert (root / "figure.png").exists() and (root / "table.csv").exists()
    assert f"tensorboard --logdir {root}" in out and str(root / "figure.png") in out
    assert any((root / "aug" / "seed0").glob("events.out.tfevents.*"))


# --------------------------------------------------------------------------------------------------
# configs


def test_configs_load_with_protocol_overrides():
    for task in ("perm", "trans", "rot"):
        full = load_config(task)
        assert full["protocol"] == "full" and full["lr"] == PAPER_LR and full["aug_passes"] == 25
        assert full["seeds"] == list(range(30)) and full["epochs"] == 50
        fast = load_config(task, {"protocol": "minibatch"})
        assert fast["lr"] == full["minibatch"]["lr"] and fast["batch_size"] == full["minibatch"]["batch_size"]
        assert load_config(task, {"protocol": "minibatch", "epochs": 3})["epochs"] == 3  # the user's wins
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config("perm", {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="protocol"):
        load_config("perm", {"protocol": "online"})
    with pytest.raises(FileNotFoundError, match="built-in"):
        load_config("perms")


# --------------------------------------------------------------------------------------------------
# data


def _connected_bfs(adjacency: torch.Tensor) -> bool:
    n = adjacency.shape[0]
    seen, queue = {0}, deque([0])
    while queue:
        i = queue.popleft()
        for j in torch.nonzero(adjacency[i]).flatten().tolist():
            if j not in seen:
                seen.add(j)
                queue.append(j)
    return len(seen) == n


def test_two_block_graphs():
    a, y = two_block_graphs(300, seed=3)
    assert a.shape == (300, 10, 10) and torch.equal(a, a.transpose(1, 2))
    assert a.diagonal(dim1=1, dim2=2).abs().sum() == 0
    assert y.tolist() == [float(_connected_bfs(g)) for g in a]
    assert 0.3 < y.mean() < 0.65  # the paper's data: about half the graphs are connected
    assert torch.equal(two_block_graphs(300, seed=3)[0], a) and not torch.equal(
        two_block_graphs(300, seed=4)[0], a
    )
    chain = torch.diag(torch.ones(5), 1)[None]
    assert (
        is_connected(chain + chain.transpose(1, 2)).item() and not is_connected(torch.zeros(1, 6, 6)).item()
    )


def test_shapes_have_fixed_orientation_and_one_mask():
    x, m = shapes(200, size=14, seed=1)
    assert x.shape == (200, 1, 14, 14) and m.shape == (200, 2, 14, 14)
    present = m.flatten(2).amax(2)
    assert torch.equal(present.sum(1), torch.ones(200))  # one shape, the other mask all zeros
    assert torch.equal(m.sum(1) > 0, x[:, 0] >= 0.5)  # the mask is where the shape covers the pixel
    triangles = m[present[:, 0] == 1, 0]
    rows = triangles.sum(-1)  # per image: filled pixels per row, top to bottom
    first = [int(r.nonzero()[0]) for r in rows]
    last = [int(r.nonzero()[-1]) for r in rows]
    # a vertex points up: the top row of a triangle is narrower than its bottom row
    assert all(r[a] < r[b] for r, a, b in zip(rows, first, last, strict=True))


def test_digits():
    x, y = digits()
    assert x.shape == (1797, 1, 8, 8) and x.min() == 0 and x.max() == 1 and set(y.tolist()) == set(range(10))


def _write_idx(path: Path, data: torch.Tensor, compress: bool) -> None:
    raw = (
        bytes([0, 0, 0x08, data.dim()])
        + struct.pack(f">{data.dim()}i", *data.shape)
        + bytes(data.flatten().tolist())
    )
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_loader(tmp_path, compress):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([3, 1, 4, 1, 5], dtype=torch.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    x, y = load_mnist(tmp_path, size=14, limit=4)
    expected = images[:4].double().reshape(4, 14, 2, 14, 2).mean(dim=(2, 4)) / 255
    torch.testing.assert_close(x[:, 0].double(), expected, rtol=0, atol=1e-6)
    assert y.tolist() == [3, 1, 4, 1]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")


# --------------------------------------------------------------------------------------------------
# models


@pytest.mark.parametrize(
    "model, x",
    [
        (PermNet(channels=3, pooled=6, head=4), two_block_graphs(16)[0]),
        (TransNet(channels=3, pooled=6), digits(16)[0]),
        (RotNet(size=6, channels=(3, 2)), shapes(16, size=6)[0]),
    ],
    ids=["perm", "trans", "rot"],
)
def test_declared_spec_makes_the_model_equivariant(model, x):
    """After projecting onto E the model commutes with the group acting on the data as augmentation does:
    the spec's fields and the data actions agree."""
    equivariant_init_(model)
    model.eval()
    act, out_act = model.data_actions()[0], model.output_action()
    g = act.group.sample(len(x), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fx = model(x)
        expected = fx if out_act is None else out_act(g, fx)
        torch.testing.assert_close(model(act(g, x)), expected, rtol=1e-4, atol=1e-5)
    model.train()
    for p in model.parameters():  # a plain (non-projected) model is not equivariant
        p.data.add_(0.5 * torch.randn_like(p))
    model.eval()
    with torch.no_grad():
        fx = model(x)
        expected = fx if out_act is None else out_act(g, fx)
        assert not torch.allclose(model(act(g, x)), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# the full protocol's aug passes as copies within a batch


def _one_aug_step(model, loader, accumulate, augmentation) -> dict[str, torch.Tensor]:
    """Train ``model`` for one epoch (one SGD step) with ``augmentation``; the change of every parameter."""
    from lightning.pytorch import Trainer

    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[augmentation],
        accumulate_grad_batches=accumulate,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader)
    assert trainer.global_step == 1
    return {k: v.detach() - before[k] for k, v in model.named_parameters()}


def test_aug_passes_as_batch_copies_take_the_same_step(monkeypatch):
    """The runner's aug step (passes as copies within each batch) equals the average over passes of the
    data set (the old way) when both see the same group elements: same gradient, same step."""
    from torch.utils.data import ConcatDataset, DataLoader

    from lightning_equi.callbacks import HaarAugmentation
    from lightning_equi.experiments.data import build_dataset
    from lightning_equi.experiments.protocol import mode_callbacks, train_loader

    passes, n, batch = 3, 40, 10
    config = load_config(
        "perm",
        {
            "aug_passes": passes,
            "batch_size": batch,
            "lr": 0.5,  # a large step, so that a wrong normalisation shows
            "model": {"channels": 2, "pooled": 4, "head": 2},
            "data": {"n_graphs": n},
        },
    )
    dataset = build_dataset("perm", **config["data"])
    torch.manual_seed(0)
    start = PermNet(**config["model"], lr=config["lr"]).state_dict()
    group = HaarAugmentation("S10", inputs="graph").group
    draws = group.sample(passes * n, generator=torch.Generator().manual_seed(1)).reshape(passes, n, -1)

    def replay(queue):  # group.sample that hands out the prepared elements in order
        return lambda count, generator=None, device=None: _checked(queue.popleft(), count)

    def _checked(g, count):
        assert g.shape[0] == count
        return g

    # the old way: the data set repeated once per pass, each sample transformed once per pass
    old_model = PermNet(**config["model"], lr=config["lr"])
    old_model.load_state_dict(start)
    old = HaarAugmentation("S10", inputs="graph", seed=0)
    queue = deque(draws[p, b : b + batch] for p in range(passes) for b in range(0, n, batch))
    monkeypatch.setattr(old.group, "sample", replay(queue))
    loader = DataLoader(ConcatDataset([dataset] * passes), batch_size=batch)
    old_step = _one_aug_step(old_model, loader, passes * n // batch, old)
    assert not queue
    monkeypatch.undo()

    # the runner's way: copy c of sample i of a batch at c * batch + i
    new_model = PermNet(**config["model"], lr=config["lr"])
    new_model.load_state_dict(start)
    loader, accumulate = train_loader(config, dataset, "aug", new_model)
    (new,) = [cb for cb in mode_callbacks(config, "aug", new_model, 0) if isinstance(cb, HaarAugmentation)]
    assert new.copies == passes and accumulate == n // batch and len(loader) == n // batch
    queue = deque(draws[:, b : b + batch].reshape(passes * batch, -1) for b in range(0, n, batch))
    monkeypatch.setattr(new.group, "sample", replay(queue))
    new_step = _one_aug_step(new_model, loader, accumulate, new)
    assert not queue

    assert max(float(v.abs().max()) for v in old_step.values()) > 1e-3  # the step is not negligible
    torch.testing.assert_close(new_step, old_step, rtol=1e-4, atol=1e-7)


def test_aug_copies_draw_independent_elements():
    """Each copy of a sample gets its own Haar draw (as each pass did)."""
    from lightning_equi.experiments.data import build_dataset
    from lightning_equi.experiments.protocol import mode_callbacks

    config = load_config("perm", {"aug_passes": 4, "model": {"channels": 2, "pooled": 4, "head": 2}})
    model = PermNet(**config["model"], lr=config["lr"])
    (aug,) = [cb for cb in mode_callbacks(config, "aug", model, 0) if type(cb).__name__ == "HaarAugmentation"]
    x, y = build_dataset("perm", n_graphs=8)[:8]
    out_x, out_y = aug.transform((x, y))
    copies = out_x.reshape(4, 8, 10, 10)
    assert torch.equal(out_y, y.repeat(4))
    for i in range(8):  # every copy is a relabelling of the same graph (same degree multiset) ...
        degrees = copies[:, i].sum(-1).sort(-1).values
        assert torch.equal(degrees, x[i].sum(-1).sort().values.expand(4, -1))
    distinct = {tuple(copies[c, i].flatten().tolist()) for c in range(4) for i in range(8)}
    assert len(distinct) > 8 * 3  # ... by (almost surely) different permutations


def test_batchnorm_models_keep_aug_passes_over_the_data():
    """With BatchNorm the copies would share batch statistics, so Rot's full protocol repeats the data."""
    from lightning_equi.experiments.data import build_dataset
    from lightning_equi.experiments.protocol import batch_coupled, mode_callbacks, train_loader

    config = load_config(
        "rot",
        {"aug_passes": 3, "batch_size": 10, "model": {"size": 6, "channels": [2]}, "data": {"n_images": 20}},
    )
    dataset = build_dataset("rot", **config["data"])
    model = RotNet(**config["model"], lr=config["lr"])
    assert batch_coupled(model) and not batch_coupled(PermNet(channels=2, pooled=4, head=2))
    loader, accumulate = train_loader(config, dataset, "aug", model)
    assert accumulate == 3 * 20 // 10 and len(loader) == accumulate
    assert [cb.copies for cb in mode_callbacks(config, "aug", model, 0) if hasattr(cb, "copies")] == [1]
    assert train_loader(config, dataset, "nom", model)[1] == 2


# --------------------------------------------------------------------------------------------------
# progress: the bar on a terminal, compact lines in a log


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    from lightning_equi.experiments.recording import use_progress_bar

    assert use_progress_bar("auto", _Terminal()) is True
    assert use_progress_bar("auto", io.StringIO()) is False
    assert use_progress_bar(True, io.StringIO()) is True and use_progress_bar(False, _Terminal()) is False
    with pytest.raises(ValueError, match="progress_bar must be true, false or 'auto'"):
        use_progress_bar("sometimes")
    with pytest.raises(ValueError, match="progress_bar must be true, false or 'auto'"):
        load_config("perm", {"progress_bar": 1})


def test_log_output_has_compact_lines_and_no_bar(tmp_path, capsys):
    """stdout captured (not a terminal): no progress bar, a start line, a few epoch lines, a result line."""
    argv = ["perm", "--out-dir", str(tmp_path), "--seeds", "1", "--epochs", "6", "--set", "threads=1"]
    small = ["model.channels=2", "model.pooled=4", "model.head=2", "data.n_graphs=20", "batch_size=10"]
    argv += [arg for pair in small for arg in ("--set", pair)] + ["--set", "progress_lines=2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "it/s" not in captured.out + captured.err and "\r" not in captured.out + captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("[")]
    for k, mode in enumerate(("nom", "aug", "equi"), start=1):
        tag = f"[{k}/3] perm {mode:<4} seed 0"
        mine = [line[len(tag) + 2 :] for line in lines if line.startswith(tag)]
        assert len(mine) == 4, mine
        assert mine[0] == "training 6 epochs"
        # progress_lines=2: every 6 / (2 + 1) epochs, not after the last (the result line follows)
        assert mine[1].startswith("epoch 2/6, loss ") and mine[2].startswith("epoch 4/6, loss ")
        assert mine[3].startswith("distance to E ") and mine[3].endswith(" s)")
