"""Attribute models: the service's 112x112 RGB face crop in, attribute outputs out.

Everything between the crop and the backbone is inside the model (grayscale for expression,
whose training photos are grayscale; resizing to the working size), so the served LiteRT file
takes exactly the crop the service already has, and training and serving crops match.

- ``expression``: softmax over :data:`app.vision.attributes.EXPRESSIONS`.
- ``gender_age``: ``female`` (probability, sigmoid) and ``age`` (years, a regression head).

The backbone is MobileNetV2 1.0 from the shared ImageNet weights; its BatchNorm layers are
recalibrated on face crops (``training.model.recalibrate_batchnorm``) before they train.
The served model averages the prediction of the crop and its mirror image (``with_mirror``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import keras
import numpy as np

from app.vision.attributes import EXPRESSIONS
from training.model import DEFAULT_WEIGHTS

Task = Literal["expression", "gender_age"]
CROP = 112
LUMA = (0.299, 0.587, 0.114)
AGE_SCALE = 100.0  # the age head predicts years / AGE_SCALE


def grayscale_layer() -> keras.layers.Layer:
    """RGB -> luma in all three channels, as a fixed 1x1 convolution (exports to any runtime)."""
    layer = keras.layers.Conv2D(3, 1, use_bias=False, trainable=False, name="grayscale")
    layer.build((None, None, None, 3))
    layer.set_weights([np.tile(np.array(LUMA, np.float32)[:, None], (1, 3))[None, None]])
    return layer


def preprocess_layers(task: Task, input_size: int) -> list[keras.layers.Layer]:
    """Crop pixels (0..255 RGB) -> what the backbone's ``to_unit_range`` layer receives (no weights to learn)."""
    layers: list[keras.layers.Layer] = []
    if task == "expression":
        layers.append(grayscale_layer())
    if input_size != CROP:
        layers.append(keras.layers.Resizing(input_size, input_size, interpolation="bilinear", name="resize"))
    return layers


def build_preprocess(task: Task, input_size: int) -> keras.Model:
    pixels = keras.Input((CROP, CROP, 3), name="pixels")
    x = pixels
    for layer in preprocess_layers(task, input_size):
        x = layer(x)
    return keras.Model(pixels, x, name="preprocess")


def build_attribute_model(
    task: Task, input_size: int = 96, dropout: float = 0.3, backbone_weights: Path | None = DEFAULT_WEIGHTS
) -> keras.Model:
    if task not in ("expression", "gender_age"):
        raise ValueError(f"task must be expression or gender_age, got {task!r}")
    if backbone_weights is not None and not Path(backbone_weights).exists():
        raise FileNotFoundError(f"backbone weights not found at {backbone_weights}: see ../shared/weights/")
    pixels = keras.Input((CROP, CROP, 3), name="pixels")
    prepared = pixels
    for layer in preprocess_layers(task, input_size):
        prepared = layer(prepared)
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(prepared)
    backbone = keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), alpha=1.0, include_top=False, weights=None, pooling="avg"
    )
    if backbone_weights is not None:
        backbone.load_weights(str(backbone_weights))
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.99
    features = keras.layers.Dropout(dropout, name="dropout")(backbone(scaled))
    if task == "expression":
        outputs = {"expression": keras.layers.Dense(len(EXPRESSIONS), activation="softmax", name="expression")(features)}
    else:
        outputs = {
            "female": keras.layers.Dense(1, activation="sigmoid", name="female")(features),
            "age": keras.layers.Dense(1, name="age")(features),
        }
    return keras.Model(pixels, outputs, name=f"facegate_{task}_mnv2_{input_size}")


OUTPUTS = {"expression": list(EXPRESSIONS), "gender_age": ["female_probability", "age_years"]}


def with_mirror(model: keras.Model, task: Task) -> keras.Model:
    """The served model: one output vector (columns :data:`OUTPUTS`), the mean of the
    predictions for the crop and for its mirror image."""
    pixels = keras.Input((CROP, CROP, 3), name="pixels")
    mirrored = keras.layers.Lambda(lambda t: t[:, :, ::-1, :], name="mirror")(pixels)
    # Inference mode fixed in the graph: an exporter that traces with ``training`` unset must not
    # see batch statistics or dropout (the export's round-trip check refuses such a file).
    a, b = model(pixels, training=False), model(mirrored, training=False)
    if task == "expression":
        out = keras.layers.Average(name="expression_probabilities")([a["expression"], b["expression"]])
    else:
        female = keras.layers.Average(name="female_probability")([a["female"], b["female"]])
        age = keras.layers.Rescaling(AGE_SCALE, name="age_years")(keras.layers.Average(name="age_mean")([a["age"], b["age"]]))
        out = keras.layers.Concatenate(name="attributes")([female, age])
    return keras.Model(pixels, out, name=f"{model.name}_served")
