"""The familiarity reference: does an input look like the training images? (lungct.inference.familiarity; the
command and the API: tests/serve/test_familiarity_api.py)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungct.errors import LungCTError
from lungct.inference.familiarity import FAMILIARITY_FILE, fit_familiarity, load_familiarity


def _weights(tmp_path: Path, content: bytes = b"weights") -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    return path


def test_rows_like_the_training_rows_are_familiar_and_shifted_ones_are_not(tmp_path):
    rng = np.random.default_rng(0)
    train, val, test = (rng.normal(size=(n, 16)) for n in (300, 200, 500))
    reference = fit_familiarity(train, val, _weights(tmp_path), percentile=99.0)
    assert np.mean(reference.novelty(test) > 1) < 0.05  # about 1% by construction, 5% allows for the draw
    shifted = test + 3.0  # every feature moved by 3 standard deviations
    assert np.all(reference.novelty(shifted) > 1)
    context = reference.context(np.vstack([test[:1], shifted[:1]]))
    assert context[0]["familiar"] is True and context[1]["familiar"] is False
    assert context[1]["novelty"] > 1 >= context[0]["novelty"]


def test_the_reference_round_trips_and_refuses_damage_and_other_weights(tmp_path):
    rng = np.random.default_rng(1)
    weights = _weights(tmp_path)
    assert load_familiarity(tmp_path, weights) is None  # not fitted: predictions simply do not say
    reference = fit_familiarity(rng.normal(size=(50, 8)), rng.normal(size=(20, 8)), weights)
    reference.save(tmp_path)
    rows = rng.normal(size=(5, 8))
    loaded = load_familiarity(tmp_path, weights)
    np.testing.assert_allclose(loaded.novelty(rows), reference.novelty(rows), rtol=1e-5)

    _weights(tmp_path, b"retrained")
    with pytest.raises(LungCTError, match=r"was fitted on other weights than model\.safetensors"):
        load_familiarity(tmp_path, weights)
    (tmp_path / FAMILIARITY_FILE).write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(LungCTError, match=rf"{FAMILIARITY_FILE} is damaged"):
        load_familiarity(tmp_path, weights)
    with pytest.raises(LungCTError, match="at least 2 training and 1 validation"):
        fit_familiarity(rows[:1], rows, weights)


def test_the_weights_are_hashed_once_per_version_of_the_file(tmp_path, monkeypatch):
    """Start-up needs the weights' hash twice (the model version and this reference's check): one read."""
    import builtins
    import hashlib

    from lungct import run as run_module
    from lungct.files import atomic_write

    reads = []

    def counting_open(path, *args, **kwargs):
        reads.append(path)
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(run_module, "open", counting_open, raising=False)
    run_module._file_digest.cache_clear()
    weights = _weights(tmp_path, b"first weights")
    fit_familiarity(np.eye(3), np.eye(3)[:1] * 2, weights).save(tmp_path)
    assert load_familiarity(tmp_path, weights) is not None
    assert run_module.weights_digest(weights).hexdigest() == hashlib.sha256(b"first weights").hexdigest()
    assert len(reads) == 1
    atomic_write(weights, b"other weights")  # retrained: a new file of the same size
    assert run_module.weights_digest(weights).hexdigest() == hashlib.sha256(b"other weights").hexdigest()
    assert len(reads) == 2
    with pytest.raises(LungCTError, match="was fitted on other weights"):
        load_familiarity(tmp_path, weights)
