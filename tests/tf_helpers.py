"""Small Keras models for the TensorFlow tests (not a test module): a CNN, an LSTM, a model
mixing an NHWC image with a vector (dynamic batch), one op tf2onnx cannot convert; and the
CNN saved by Keras itself as a ``.keras`` file and a SavedModel directory, in a separate
process (the test process never imports TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

NETS_PY = '''
import keras
import tensorflow as tf


def cnn(classes=10):
    """NHWC images 16x16x3 -> logits."""
    x = keras.Input((16, 16, 3), name="image")
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.MaxPooling2D()(y)
    y = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, keras.layers.Dense(classes, name="logits")(y), name="cnn")


def lstm(unroll=True):
    """Sequences of 6 steps x 4 features -> 3 scores."""
    x = keras.Input((6, 4), name="seq")
    y = keras.layers.LSTM(8, unroll=unroll)(x)
    return keras.Model(x, keras.layers.Dense(3, name="scores")(y), name="lstm")


def mixed():
    """An NHWC image and a feature vector, both with a dynamic batch."""
    image = keras.Input((8, 8, 3), name="image")
    extra = keras.Input((4,), name="extra")
    y = keras.layers.Conv2D(4, 3, activation="relu")(image)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Concatenate()([y, keras.layers.Dense(4)(extra)])
    return keras.Model([image, extra], keras.layers.Dense(2, name="out")(y), name="mixed")


class LogGamma(keras.layers.Layer):
    def call(self, x):
        return tf.math.lgamma(tf.abs(x) + 1.0)


def unsupported():
    """lgamma: no ONNX op, so tf2onnx cannot convert it."""
    x = keras.Input((4,), name="x")
    return keras.Model(x, LogGamma()(x), name="unsupported")
'''

SAVE_PY = '''
import json, os, sys
import numpy as np
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "tensorflow"
import keras
sys.path.insert(0, sys.argv[1])
import nets

keras.utils.set_random_seed(7)
model = nets.cnn()
model.save(os.path.join(sys.argv[2], "cnn.keras"))
model.export(os.path.join(sys.argv[2], "cnn_saved"), verbose=False)
x = np.random.default_rng(123).standard_normal((3, 16, 16, 3)).astype(np.float32)
np.savez(os.path.join(sys.argv[2], "cnn_expected.npz"), x=x,
         logits=model(x, training=False).numpy())
print(json.dumps({"signatures": ["serve", "serving_default"]}))
'''


def write_models(root: Path) -> Path:
    (root / "models").mkdir(parents=True, exist_ok=True)
    path = root / "models" / "nets.py"
    path.write_text(NETS_PY, encoding="utf-8")
    return path


def save_cnn_sources(root: Path) -> None:
    """``cnn.keras``, ``cnn_saved/`` (SavedModel) and ``cnn_expected.npz`` (inputs and Keras's
    own outputs) under ``root``, made by Keras in a child process."""
    write_models(root)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, "-c", SAVE_PY, str(root / "models"), str(root)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    json.loads(proc.stdout.strip().splitlines()[-1])


def recipe(root: Path, models: str, steps: str, name: str = "tfr") -> Path:
    text = (f"name: {name}\nmodels:\n" + textwrap.indent(textwrap.dedent(models).strip("\n"),
                                                          "  ")
            + "\nsteps:\n" + textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ") + "\n")
    path = root / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path
