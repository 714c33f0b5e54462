"""The ``lightning-equi`` command: LightningCLI with the training mode as one flag.

:class:`EquiCLI` is a :class:`~lightning.pytorch.cli.LightningCLI` with a few more options at the top
level of each subcommand (next to ``trainer``, ``model`` and ``data``):

* ``--mode``: ``nom`` (default), ``aug``, ``equi``, ``reg`` or ``aug+reg``
  (:data:`~lightning_equi.callbacks.MODES`);
* ``--group``: the group, e.g. ``C4``; default: the group of the model's ``symmetry_spec()``. A model
  without ``symmetry_spec()`` gets its spec inferred from ``--group`` and ``--inputs`` (zero lines:
  ``mode: equi`` and ``group: C4`` in the YAML; :func:`~lightning_equi.subspace.infer_spec`);
* ``--inputs``: the action on the inputs: ``image`` (default), ``points``, ``set``, ``graph``,
  ``<name>:<fields>`` such as ``image:regular``, or ``{batch key: action}``;
* ``--targets``: the action on the targets; default ``null`` (invariant targets);
* ``--monitor``: add an :class:`~lightning_equi.callbacks.EquivarianceMonitor`; default: when the
  model has a ``symmetry_spec()``, or ``equi`` infers one;
* ``--monitor_every_n_steps``: the monitor's logging period (default 50);
* ``--seed_aug``: seed of the Haar sampler (default: from ``--seed_everything``);
* ``--gamma``: the penalty's strength in modes ``reg`` and ``aug+reg``: a number (default 1), ``inf``,
  or ``{layer: gamma, '*': gamma}``;
* ``--penalty``: ``proximal`` (default: stable for every lr * gamma) or ``additive`` (the gradient);
* ``--gamma_schedule``: a schedule instead of ``--gamma``, e.g. ``{kind: warmup, gamma: 100, steps: 500}``
  (kinds: :data:`~lightning_equi.schedules.SCHEDULES`);
* ``--mode_options``: any other option of :func:`~lightning_equi.callbacks.build_callbacks`, as a
  dict: ``{copies: 4}``, ``{orbit: true}``, ``{reproject_weights: true}``, ...

The mode's callbacks are built once the model exists and are added to those configured under
``trainer.callbacks`` (which are kept), before the Trainer is created, so the Trainer orders them
as usual (checkpointing last). An unknown mode fails while parsing; a mode whose prerequisites are
missing (``aug`` without an action on the data or a group, ``equi`` on a model without a spec, an
unknown group, a group other than the spec's, a spec that does not fit the model) fails before
training, with :class:`ModeConfigError`; the console script prints it, like any misconfiguration met
once the fit runs, as ``lightning-equi: error: ...`` and exits with code 2. The model's
``symmetry_spec()`` may return a SymmetrySpec or a ready ModelProjection.

Example (shell)::

    lightning-equi fit --model lightning_equi.testing.BoringEquiModel --mode equi --trainer.max_steps 5
    lightning-equi fit --config examples/configs/boring_equi.yaml --mode aug

Example (Python):
    >>> args = ["--model", "lightning_equi.testing.BoringEquiModel", "--mode", "equi"]
    >>> cli = EquiCLI(args=[*args, "--trainer.logger", "false"], run=False)
    >>> [type(cb).__name__ for cb in cli.mode_callbacks]
    ['EquivarianceMonitor', 'EquivariantProjection']
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_equi.callbacks.modes import MODES, build_callbacks
from lightning_equi.schedules import make_schedule
from lightning_equi.subspace import ModelProjection, SymmetrySpec

__all__ = ["EquiCLI", "ModeConfigError", "main", "MODE_OPTIONS"]

#: the options EquiCLI adds, with their defaults
MODE_OPTIONS: dict[str, Any] = {
    "mode": "nom",
    "group": None,
    "inputs": "image",
    "targets": None,
    "monitor": None,
    "monitor_every_n_steps": 50,
    "seed_aug": None,
    "gamma": None,
    "penalty": None,
    "gamma_schedule": None,
    "mode_options": {},
}

Mode = Literal["nom", "aug", "equi", "reg", "aug+reg"]
assert set(Mode.__args__) == set(MODES), "Mode must list the modes of build_callbacks"

# A gamma: a number, inf, or {layer: number or inf} (YAML reads a bare `inf` as a string)
GammaArg = float | Literal["inf"] | dict[str, float | Literal["inf"]] | None

# An action: a name ("image", "points:standard", ...), or {batch key or index: name or null}.
ActionArg = str | dict[int | str, str | None] | None


class ModeConfigError(MisconfigurationException):
    """The mode cannot be set up with the given options (raised by :class:`EquiCLI` before training)."""


class EquiCLI(LightningCLI):
    """LightningCLI with ``--mode nom|aug|equi`` and the options of the mode's callbacks.

    Takes the arguments of :class:`~lightning.pytorch.cli.LightningCLI`; ``model_class=None`` (the
    default) accepts any LightningModule given as ``--model path.to.Class``. After construction,
    :attr:`mode_callbacks` holds the callbacks the mode added to :attr:`trainer`.

    Raises:
        ModeConfigError: when the mode's callbacks cannot be built (see
            :func:`~lightning_equi.callbacks.build_callbacks`), with the message naming the fix.

    Example:
        >>> cli = EquiCLI(args=["--model", "lightning_equi.testing.BoringEquiModel", "--mode", "aug",
        ...                     "--seed_aug", "3", "--trainer.logger", "false"], run=False)
        >>> aug = cli.mode_callbacks[-1]
        >>> (type(aug).__name__, aug.group.name, aug.seed)
        ('HaarAugmentation', 'C4', 3)
    """

    mode_callbacks: list[Callback]

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--mode``, ``--group``, ``--inputs``, ... (see the module docstring) to ``parser``."""
        parser.add_argument(
            "--mode",
            type=Mode,
            default=MODE_OPTIONS["mode"],
            help="Training mode: " + "; ".join(f"{k}: {v}" for k, v in MODES.items()) + ".",
        )
        parser.add_argument(
            "--group",
            type=str | None,
            default=None,
            help="The group, by name (C4, D4, SO2, T14x14, S10, ...). Default: the group of the model's "
            "symmetry_spec(). Needed by aug when the model has no spec; with equi, a model without a spec "
            "gets one inferred from the group and --inputs.",
        )
        parser.add_argument(
            "--inputs",
            type=ActionArg,
            default=MODE_OPTIONS["inputs"],
            help="How the group acts on the inputs: image, points, set, graph (optionally "
            "'<name>:<fields>'), or {batch key: action}.",
        )
        parser.add_argument(
            "--targets",
            type=ActionArg,
            default=None,
            help="How the group acts on the targets (null: invariant targets such as labels).",
        )
        parser.add_argument(
            "--monitor",
            type=bool | None,
            default=None,
            help="Add an EquivarianceMonitor (default: when the model has a symmetry_spec(), or equi "
            "infers one).",
        )
        parser.add_argument(
            "--monitor_every_n_steps",
            type=int,
            default=MODE_OPTIONS["monitor_every_n_steps"],
            help="Log the distances to E every this many steps.",
        )
        parser.add_argument(
            "--seed_aug",
            type=int | None,
            default=None,
            help="Seed of the Haar sampler of mode aug (default: from seed_everything).",
        )
        parser.add_argument(
            "--gamma",
            type=GammaArg,
            default=None,
            help="Modes reg and aug+reg: the penalty gamma/2 ||Pi_perp A||^2 per layer: a number (default 1; "
            "inf: projected onto E after each step) or {layer: gamma, '*': gamma for the others}.",
        )
        parser.add_argument(
            "--penalty",
            type=Literal["proximal", "additive"] | None,
            default=None,
            help="Modes reg and aug+reg: 'proximal' (default; after the optimizer step, stable for every "
            "lr * gamma, any optimizer) or 'additive' (gamma Pi_perp A added to the gradient; plain SGD).",
        )
        parser.add_argument(
            "--gamma_schedule",
            type=dict[str, Any] | None,
            default=None,
            help="Modes reg and aug+reg: a schedule gamma(step) instead of --gamma, e.g. {kind: warmup, "
            "gamma: 100, steps: 500}; kinds: constant, warmup, cosine, relax_return.",
        )
        parser.add_argument(
            "--mode_options",
            type=dict[str, Any],
            default={},
            help="Other options of build_callbacks, e.g. {copies: 4}, {orbit: true}, {per_sample: false}, "
            "{reproject_weights: true}, {probe_size: 16}.",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Create the Trainer with the configured callbacks followed by the mode's callbacks.

        The model exists at this point, so the mode can take the group from its spec and check its
        prerequisites before any training. ``trainer.callbacks`` from the config are kept.
        """
        options = {key: self._get(self.config, key, default) for key, default in MODE_OPTIONS.items()}
        self.mode_callbacks = self.build_mode_callbacks(self.model, **options)
        trainer_config = self._get(self.config_init, "trainer", default={})
        configured = kwargs.pop("callbacks", trainer_config.get("callbacks"))
        if configured is None:
            configured = []
        elif not isinstance(configured, list):
            configured = [configured]
        return super().instantiate_trainer(callbacks=[*configured, *self.mode_callbacks], **kwargs)

    @staticmethod
    def build_mode_callbacks(
        model: LightningModule | None,
        mode: str = "nom",
        group: str | None = None,
        inputs: Any = "image",
        targets: Any = None,
        monitor: bool | None = None,
        monitor_every_n_steps: int = 50,
        seed_aug: int | None = None,
        gamma: float | str | dict[str, float | str] | None = None,
        penalty: str | None = None,
        gamma_schedule: dict[str, Any] | None = None,
        mode_options: dict[str, Any] | None = None,
    ) -> list[Callback]:
        """The callbacks of ``mode`` for ``model``, from the CLI's options.

        Example:
            >>> from lightning_equi.testing import BoringEquiModel
            >>> [type(cb).__name__ for cb in EquiCLI.build_mode_callbacks(BoringEquiModel(), "nom")]
            ['EquivarianceMonitor']
        """
        spec: SymmetrySpec | ModelProjection | None = None
        method = getattr(model, "symmetry_spec", None)
        if callable(method):
            spec = method()  # a ModelProjection too: what escnn_spec gives and HasSymmetrySpec allows
            if not isinstance(spec, (SymmetrySpec, ModelProjection)):
                raise ModeConfigError(
                    f"{type(model).__name__}.symmetry_spec() returned {type(spec).__name__}, "
                    "expected a SymmetrySpec or a ModelProjection"
                )
        if monitor is None:  # also when the spec will be inferred (mode equi, a group, no spec)
            monitor = spec is not None or (mode == "equi" and group is not None)
        options = dict(mode_options or {})
        for key, value in (("every_n_steps", monitor_every_n_steps), ("seed", seed_aug)):
            if key in options:
                raise ModeConfigError(
                    f"mode_options sets {key!r}={options[key]!r}: use "
                    f"--{'monitor_every_n_steps' if key == 'every_n_steps' else 'seed_aug'} instead"
                )
            # `seed` also reaches the monitor's probe seed; leave it out unless given
            if value is not None and (key != "seed" or mode in ("aug", "aug+reg")):
                options[key] = value
        if gamma is not None and gamma_schedule is not None:
            raise ModeConfigError(
                "--gamma and --gamma_schedule both set: give the schedule's value inside it, e.g. "
                "--gamma_schedule '{kind: warmup, gamma: 100, steps: 500}'"
            )
        gamma = _infinite(gamma)
        if gamma_schedule is not None:
            try:
                gamma = make_schedule(gamma_schedule)
            except ValueError as err:
                raise ModeConfigError(f"--gamma_schedule: {err}") from err
        for key, value in (("gamma", gamma), ("penalty", penalty)):
            if value is None:
                continue
            if key in options:
                raise ModeConfigError(f"mode_options sets {key!r}={options[key]!r}: use --{key} instead")
            options[key] = value
        try:
            return build_callbacks(
                mode,
                group=group,
                spec=spec,
                inputs=inputs,
                targets=targets,
                monitor=monitor,
                model=model,
                **options,
            )
        except (MisconfigurationException, TypeError, ValueError) as err:
            raise ModeConfigError(
                f"--mode {mode}: {err}\n(command-line options: --group, --inputs, --targets, --monitor, "
                "--monitor_every_n_steps, --seed_aug, --gamma, --penalty, --gamma_schedule, --mode_options)"
            ) from err


def _infinite(gamma: Any) -> Any:
    """``"inf"`` (as YAML and the command line give it) -> ``math.inf``, also inside a per-layer dict."""
    if isinstance(gamma, dict):
        return {key: _infinite(value) for key, value in gamma.items()}
    return math.inf if gamma == "inf" else gamma


def main(args: ArgsType = None) -> None:
    """The ``lightning-equi`` console script: ``lightning-equi fit --model ... --mode equi``.

    A mode that cannot be set up, and any misconfiguration found once the fit starts (a spec that
    does not fit the model, ...), prints ``lightning-equi: error: ...`` and exits with code 2.

    Example (shell)::

        lightning-equi fit --model lightning_equi.testing.BoringEquiModel --mode equi --trainer.max_steps 5
    """
    try:
        EquiCLI(args=args, parser_kwargs={"prog": "lightning-equi"})
    except MisconfigurationException as err:  # ModeConfigError, and those raised once the fit runs
        print(f"lightning-equi: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
