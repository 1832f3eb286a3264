"""Keras model -> float32 TFLite bytes, through a SavedModel (keeps every weight)."""

from __future__ import annotations

import tempfile

import keras
import tensorflow as tf


def to_tflite(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        return bytes(converter.convert())
