"""The DVC pipeline's building blocks: a params.yaml overlay on an experiment config, and a given split.

dvc.yaml (audit -> split -> train -> evaluate -> export) calls the ordinary CLI; see docs/pipeline.md.
`lungct.pipeline.params`: load_config_with_params, merge_params. `lungct.pipeline.split`: write_split,
read_split_file, train_with_split. (Not re-exported here: the CLI imports this package at start-up, and the
split module pulls in torch.)
"""
