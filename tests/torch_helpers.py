"""Small models and recipes shared by the PyTorch/ONNX/verify tests (not a test module).

Every test runs the real backends (torch, onnx, onnxruntime, onnxsim) on a tiny CNN, so the
whole set stays fast on 2 cores.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict, Optional

HELPERS_PY = '''
from torch import nn


class Block(nn.Module):
    """A residual block: conv-bn-relu, conv-bn, plus the input."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
'''

TINY_PY = '''
import torch
from torch import nn

from helpers import Block


class TinyCNN(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.block = Block(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def tiny(num_classes=10, width=8):
    return TinyCNN(num_classes, width)


def not_a_module():
    return {"weights": 1}


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if x.mean() > 0:
            return y * 2
        return y - 1


def branchy():
    return Branchy()


class Unscriptable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        parts = {**{"y": self.conv(x)}}
        return parts["y"]


def unscriptable():
    return Unscriptable()


class CumMax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, 1)[0]


def cummax():
    return CumMax()


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean(dim=(2, 3))


def two_outputs():
    return TwoOutputs()


class MetaNamed(nn.Module):
    """A submodule called ``meta``: torch.export captures it, but torch 2.13 cannot turn the
    program back into a module (GraphModule.meta shadows it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.meta = nn.Linear(4, 2)

    def forward(self, x):
        return self.meta(self.conv(x).mean(dim=(2, 3)))


def meta_named():
    return MetaNamed()
'''

MODEL = {
    "source": "models/tiny.py:tiny",
    "kwargs": {"num_classes": 10, "width": 8},
    "inputs": {"x": {"shape": ["batch", 3, 16, 16]}},
    "dims": {"batch": {"min": 1, "opt": 1, "max": 8}},
}


def write_models(root: Path) -> None:
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / "tiny.py").write_text(TINY_PY, encoding="utf-8")
    (root / "models" / "helpers.py").write_text(HELPERS_PY, encoding="utf-8")


def recipe(steps: str, models: Optional[Dict[str, Any]] = None, name: str = "t") -> str:
    """A recipe text: ``models`` (default: ``tiny`` = MODEL) and the given steps (YAML)."""
    import json

    models = models if models is not None else {"tiny": MODEL}
    return (f"name: {name}\nmodels: {json.dumps(models)}\nsteps:\n"
            + textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ") + "\n")


def write_recipe(root: Path, steps: str, models: Optional[Dict[str, Any]] = None,
                 filename: str = "r.yaml") -> Path:
    write_models(root)
    path = root / filename
    path.write_text(recipe(steps, models), encoding="utf-8")
    return path


def model(**changes: Any) -> Dict[str, Any]:
    """MODEL with some fields changed (None removes one)."""
    out = {k: v for k, v in MODEL.items()}
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out
