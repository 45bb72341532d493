"""A small residual CNN in Keras (recipes/keras_cpu.yaml): 32x32 RGB images in NHWC
(batch, height, width, channels), three stages of two residual blocks, 10 classes; 0.18 M
parameters at width 16. Weights come from the recipe's seed (buildgraph calls
keras.utils.set_random_seed before the factory); nothing is downloaded."""

import keras
from keras import layers


def _conv_bn(x, filters, stride=1, relu=True):
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def _block(x, filters, stride=1):
    shortcut = x
    y = _conv_bn(x, filters, stride)
    y = _conv_bn(y, filters, relu=False)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def keras_cnn(num_classes=10, width=16):
    """The model: stem, stages of width, 2x and 4x width (strides 1, 2, 2), global average
    pooling, a dense classifier named ``logits``."""
    image = keras.Input((32, 32, 3), name="image")
    x = _conv_bn(image, width)
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        x = _block(x, filters, stride=1 if i == 0 else 2)
        x = _block(x, filters)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, layers.Dense(num_classes, name="logits")(x), name="keras_cnn")
