"""TensorFlow and Keras models: sources (a SavedModel directory, a ``.keras``/``.h5`` file, a
factory returning a ``tf.keras.Model``), the ``keras.export`` and ``tf2onnx.convert`` step
kinds, and the TensorFlow runtime (a TensorFlow model's reference). TensorFlow is imported
only inside the workers that run these."""
