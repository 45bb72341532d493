"""Small models and recipes for the TVM tests (not a test module).

Two tiny CNNs share their first layer (conv 3->8, 3x3, on 16x16), so that tuning the second
after the first has one workload already tuned.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

NETS_PY = '''
import torch
from torch import nn


class Stem(nn.Module):
    """conv 3->8 + relu: the layer both models share."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class NetA(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Stem()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.stem(x).mean((2, 3)))


class NetB(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Stem()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.conv2(self.stem(x)))
        return self.fc(y.mean((2, 3)))


def inverted_residual(cin, cout, expand=2):
    """MobileNetV2's block without the skip: 1x1 conv, BN, ReLU6, depthwise 3x3
    (groups = channels), BN, ReLU6, 1x1 projection, BN."""
    hidden = cin * expand
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
        nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))


class MobileNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(inverted_residual(8, 8), inverted_residual(8, 16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def mobilenetish():
    net = MobileNetish()
    for m in net.modules():  # non-trivial BatchNorm statistics, so folding them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return net


def net_a():
    return NetA()


def net_b():
    return NetB()
'''


def model(factory: str, seed: int = 0) -> Dict[str, Any]:
    return {"source": f"models/nets.py:{factory}", "seed": seed,
            "inputs": {"x": {"shape": ["batch", 3, 16, 16]}},
            "dims": {"batch": {"min": 1, "opt": 1, "max": 4}}}


MODELS = {"net_a": model("net_a"), "net_b": model("net_b", seed=1),
          "mobilenet": model("mobilenetish", seed=2)}

TUNE = {"target": "native", "dims": {"batch": 1}, "trials": 6, "trials_per_iter": 2,
        "population": 16, "min_repeat_ms": 5, "number": 2}
"""Tuning small enough for the default test run: real MetaSchedule, a handful of trials."""


def write_project(root: Path, steps: str, name: str = "tvmt", filename: str = "r.yaml",
                  models: Optional[Dict[str, Any]] = None) -> Path:
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / "nets.py").write_text(NETS_PY, encoding="utf-8")
    text = (f"name: {name}\nmodels: {json.dumps(models or MODELS)}\nsteps:\n"
            + textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ") + "\n")
    path = root / filename
    path.write_text(text, encoding="utf-8")
    return path


def run(recipe: Path, root: Path, **kwargs: Any) -> Any:
    from buildgraph import api

    return api.run(recipe, cache_dir=root / ".cache", build_dir=root / "build",
                   jobs=2, **kwargs)


def eager(root: Path, factory: str, seed: int, x: Any) -> Any:
    """The model's output in eager PyTorch (same seeded init as the recipe)."""
    import importlib.util
    import sys

    import torch

    sys.path.insert(0, str(root / "models"))
    try:
        spec = importlib.util.spec_from_file_location(f"nets_{abs(hash(str(root)))}",
                                                      root / "models" / "nets.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(root / "models"))
    torch.manual_seed(seed)
    net = getattr(module, factory)().eval()
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def log_of(result: Any, step: str) -> str:
    return Path(result[step].log_path).read_text(encoding="utf-8")


def needs_tvm() -> None:
    pytest.importorskip("tvm", reason="TVM is not installed (pip install buildgraph[tvm])")
