"""The paper's Perm, Trans and Rot experiments, and the three-mode comparison that runs them.

- :mod:`~lightning_equi.experiments.data`: the data sets of the three tasks (``build_dataset``);
- :mod:`~lightning_equi.experiments.models`: their LightningModules, with symmetry specs: the paper's v1
  networks (the default, ``TASKS``) and this project's variants (``NETWORKS``, ``network_class``);
- :mod:`~lightning_equi.experiments.samplers`: how aug draws group elements (``sampler: haar | batch |
  paper``; the paper's code's biased draws);
- :mod:`~lightning_equi.experiments.config`: every config key with its default, the built-in YAML configs,
  ``load_config``, ``merge_config`` and ``parse_overrides``;
- :mod:`~lightning_equi.experiments.protocol`: a run's loader, gradient accumulation and the callbacks of
  its mode (``train_loader``, ``mode_callbacks``, ``batch_coupled``);
- :mod:`~lightning_equi.experiments.recording`: what a run records while it trains
  (``TrajectoryRecorder``, ``ProgressLines``, ``use_progress_bar``);
- :mod:`~lightning_equi.experiments.runner`: one run, its evaluation, the comparison over modes and seeds,
  and the ``lightning-equi-compare`` console script;
- :mod:`~lightning_equi.experiments.figure`: the paper-style figure and the summary table;
- :mod:`~lightning_equi.experiments.eq_aug_reg`: the penalty modes reg and aug+reg in the eq_aug_reg setting
  (attractor, explicit-SGD divergence, accuracy against exactness).
"""
