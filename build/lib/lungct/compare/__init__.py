"""Backbone leaderboard (`lungct compare`). See docs/experiments.md.

`lungct.compare.core`: compare, CompareSettings, arch_config, verify_split. `lungct.compare.profile`: parameters,
FLOPs and CPU latency. `lungct.compare.report`: rows, recommendations, Markdown/JSON/CSV and the ROC overlay.
"""
