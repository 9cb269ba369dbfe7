#!/usr/bin/env bash
# Runs the model-quality cv rows one after another; each `lungct cv` reuses finished folds, so re-running
# this script after an interruption resumes where it stopped. Usage: run_cv.sh NAME [NAME ...]
set -u
cd "$(dirname "$0")/../.."
for name in "$@"; do
  echo "== $name $(date -u +%FT%TZ)"
  .venv/bin/lungct cv --config "configs/model_quality/$name.yaml" --folds 5 --out "runs/model_quality/$name" --quiet --no-track \
    || echo "!! $name failed"
done
echo "== done $(date -u +%FT%TZ)"
