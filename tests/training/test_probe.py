"""The linear-probe head phase: a closed-form head that predicts exactly what the regression predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from lungct.errors import LungCTError
from lungct.inference import Predictor
from lungct.training.probe import write_head
from lungct.training.trainer import train
from tests.conftest import tiny_config


@pytest.mark.parametrize("classes", [2, 3])
def test_folded_head_reproduces_the_regression(classes):
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (90, 7))
    y = np.arange(90) % classes
    x[:, 0] += y * 2
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(x), y)
    head = nn.Sequential(nn.Dropout(0.3), nn.Linear(7, classes)).eval()
    write_head(head, scaler, lr, classes)
    with torch.no_grad():
        ours = torch.softmax(head(torch.as_tensor(x, dtype=torch.float32)), 1).numpy()
    np.testing.assert_allclose(ours, lr.predict_proba(scaler.transform(x)), atol=1e-5)


def test_probe_refuses_a_head_with_hidden_layers():
    head = nn.Sequential(nn.Dropout(0.3), nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))
    lr = LogisticRegression().fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(LungCTError, match="hidden"):
        write_head(head, StandardScaler().fit(np.eye(4)), lr, 2)


def test_probe_run_keeps_the_backbone_and_learns_the_classes(tiny_dataset, fake_pretrained, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_config(tiny_dataset, fake_pretrained, phase1={"solver": "logistic", "c": 1.0})
    cfg.train.phase2.epochs = 0
    run = train(cfg, tmp_path / "run", progress=False)
    history = run.history.read_text().splitlines()
    assert len(history) == 2 and history[1].startswith("head,1,")  # one probe "epoch", no fine-tuning
    trained = load_file(str(run.weights))
    pretrained = load_file(str(fake_pretrained))
    assert torch.equal(trained["backbone.conv_stem.weight"], pretrained["conv_stem.weight"])
    predictor = Predictor(run.path, backend="torch")
    test = [line.split(",") for line in run.split.read_text().splitlines()[1:]]
    test = [(p, label) for p, label, _, part in test if part == "test"]
    probs = predictor.predict_paths_array([p for p, _ in test])
    accuracy = np.mean([predictor.classes[int(q.argmax())] == label for q, (_, label) in zip(probs, test, strict=True)])
    assert accuracy >= 0.6  # three visibly different synthetic classes; chance is 0.33
