"""Backbone leaderboard (`lungct compare`). See docs/experiments.md.

`lungct.compare.core`: compare, CompareSettings, arch_config. `lungct.compare.profile`: parameters,
FLOPs and CPU latency. `lungct.compare.report`: rows, recommendations, Markdown/JSON/CSV and the ROC overlay.
"""
