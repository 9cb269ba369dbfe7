"""Hyperparameter search with Optuna (`lungct tune`). See docs/experiments.md.

`lungct.tuning.study`: tune, TuneSettings, pruning_callback, open_study. `lungct.tuning.space`: the knobs,
apply_params. `lungct.tuning.report`: the tables, plots and best config. (Not re-exported here: the CLI
imports this package's command module at start-up, and optuna takes a second to import.)
"""
