"""Cross-validation (`lungct cv`): train and test K group folds, summarise them, pool held-out predictions.

It trains (lungct.training) and evaluates (lungct.evaluation), so it sits above both.
`lungct.crossval.folds`: cross_validate, fold_splits, pool_from_config, pool_within_run, summarise, cv_markdown.
"""
