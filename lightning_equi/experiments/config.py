"""The comparison's configuration: every key with its default, the modes and protocols, and loading.

Configs are YAML files (``configs/perm.yaml``, ``trans.yaml``, ``rot.yaml`` are built in), read over
:data:`DEFAULTS` by :func:`load_config`; ``--set key.sub=value`` pairs on the command line become a nested
dict with :func:`parse_overrides`. Why not LightningCLI: it builds one Trainer and one model per process from
one config, while the runner (:mod:`lightning_equi.experiments.runner`) loops over modes and seeds, builds
the callbacks per mode, shares one initial state across modes and aggregates the runs; each run is still an
ordinary ``Trainer.fit`` with the module's own hyper-parameters.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lightning_equi.experiments.models import OPTIMIZERS, TASKS, VARIANTS
from lightning_equi.experiments.samplers import SAMPLERS

__all__ = [
    "MODES",
    "PROTOCOLS",
    "DEFAULTS",
    "builtin_config",
    "builtin_names",
    "merge_config",
    "parse_overrides",
    "load_config",
]

MODES = ("nom", "aug", "equi")
PROTOCOLS = ("full", "minibatch")

#: every key a config may set, with its default
DEFAULTS: dict[str, Any] = {
    "task": None,  # perm | trans | rot
    "variant": "paper",  # paper: the paper's v1 networks and data; project: this project's (models.py)
    "sampler": "haar",  # aug's draws: haar (per sample), batch (uniform per batch), paper (samplers.py)
    "optimizer": "sgd",  # sgd (the paper's) | momentum (0.9) | adam
    "name": None,  # output folder under out_dir (default: the task)
    "out_dir": "runs",
    "modes": list(MODES),
    "seeds": 3,  # a count (seeds 0 .. n-1) or a list
    "epochs": 50,
    "protocol": "full",
    "batch_size": 100,
    "lr": 1e-5,
    "aug_passes": 25,  # augmented passes (full) or copies (minibatch) averaged per step
    "orbit": False,  # aug over the whole orbit of every sample (finite groups; exact augmented gradient)
    "preserve_norm": False,  # equivariant_init_: keep each layer's norm after projecting (paper: no)
    "probe": 256,  # samples for the functional equivariance error in the table
    "monitor_every_n_steps": 50,  # EquivarianceMonitor: TensorBoard distances every n steps (and every epoch)
    "accelerator": "cpu",
    "threads": None,  # torch.set_num_threads for the runs (None: torch's default)
    "progress_bar": "auto",  # true: Lightning's bar; false: none; auto: the bar on a terminal, else lines
    "progress_lines": 5,  # without the bar: about this many progress lines per run (0: only the result line)
    "model": {},  # keyword arguments of the task's LightningModule
    "data": {},  # keyword arguments of the task's data set (see data.build_dataset)
    "minibatch": {},  # overrides applied with protocol: minibatch
}


def _configs_folder() -> Path:
    return Path(str(resources.files("lightning_equi.experiments"))) / "configs"


def builtin_config(name: str) -> Path:
    """The path of a built-in config (``perm``, ``trans``, ``rot``: the paper's networks; ``*_project``: this
    project's variants).

    Raises:
        FileNotFoundError: for a name that is not built in.

    Example:
        >>> builtin_config("rot").name
        'rot.yaml'
    """
    path = _configs_folder() / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no built-in config {name!r}; built-in: {sorted(builtin_names())}")
    return path


def builtin_names() -> list[str]:
    """The names of the built-in configs.

    Example:
        >>> sorted(builtin_names())
        ['groups', 'perm', 'perm_project', 'rot', 'rot_project', 'trans', 'trans_project']
    """
    return [p.stem for p in _configs_folder().glob("*.yaml")]


def merge_config(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested dicts merged key by key (neither is modified).

    Example:
        >>> merge_config({"epochs": 5, "model": {"channels": 4, "head": 8}}, {"model": {"channels": 16}})
        {'epochs': 5, 'model': {'channels': 16, 'head': 8}}
    """
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            merge_config(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """``["model.channels=8", "epochs=5"]`` -> nested dict; values parsed as YAML.

    Raises:
        ValueError: for a pair without ``=``.

    Example:
        >>> parse_overrides(["model.channels=8", "epochs=5", "modes=[nom, equi]"])
        {'model': {'channels': 8}, 'epochs': 5, 'modes': ['nom', 'equi']}
    """
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, got {pair!r}")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def load_config(source: str | Path | dict, overrides: dict | None = None) -> dict:
    """The full config: defaults, then the YAML file (or built-in name, or dict), then ``overrides``.

    With ``protocol: minibatch`` the file's ``minibatch:`` section is applied after the file and before
    ``overrides`` (so ``--epochs`` on the command line wins over both).

    Raises:
        ValueError: for an unknown key, task, mode, protocol, variant, sampler or optimizer.

    Example:
        >>> config = load_config("rot", {"protocol": "minibatch", "seeds": 2})
        >>> config["name"], config["seeds"], config["epochs"] == load_config("rot")["minibatch"]["epochs"]
        ('rot', [0, 1], True)
    """
    if isinstance(source, dict):
        loaded = source
    else:
        path = Path(source)
        if not path.exists() and path.suffix == "":
            path = builtin_config(str(source))
        loaded = yaml.safe_load(path.read_text()) or {}
    overrides = overrides or {}
    config = merge_config(merge_config(DEFAULTS, loaded), overrides)
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(DEFAULTS)}")
    if config["protocol"] not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {config['protocol']!r}")
    if config["protocol"] == "minibatch":
        config = merge_config(merge_config(merge_config(DEFAULTS, loaded), config["minibatch"]), overrides)
    if not (isinstance(config["progress_bar"], bool) or config["progress_bar"] == "auto"):
        raise ValueError(f"progress_bar must be true, false or 'auto', got {config['progress_bar']!r}")
    if config["task"] not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {config['task']!r}")
    for key, valid in (("variant", VARIANTS), ("sampler", SAMPLERS), ("optimizer", OPTIMIZERS)):
        if config[key] not in valid:
            raise ValueError(f"{key} must be one of {valid}, got {config[key]!r}")
    bad = [m for m in config["modes"] if m not in MODES]
    if bad:
        raise ValueError(f"modes must be among {MODES}, got {bad}")
    if isinstance(config["seeds"], int):
        config["seeds"] = list(range(config["seeds"]))
    config["name"] = config["name"] or config["task"]
    return config
