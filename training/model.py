"""The embedder: MobileNetV2 backbone, a dense head, L2 normalisation.

The method's head is Dense(256, relu): unit vectors with non-negative components. The
distilled embedder uses a linear head the size of the teacher's embedding (192) so its vectors
live on the whole sphere, like the teacher's, and can be regressed onto them directly.

The model takes RGB pixels 0..255 (float32) and scales them to -1..1 itself, so the exported
TFLite file and the Keras model see exactly what the aligner produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import keras
import numpy as np

from app.core.config import SHARED_DIR

DEFAULT_WEIGHTS = SHARED_DIR / "weights" / "mobilenet_v2_1.0_no_top.weights.h5"
TrainableMode = Literal["frozen", "partial", "full"]
BatchNormMode = Literal["frozen", "train"]


def build_embedder(
    input_size: int = 160,
    alpha: float = 1.0,
    embedding_size: int = 256,
    backbone_weights: Path | None = DEFAULT_WEIGHTS,
    trainable: TrainableMode = "full",
    trainable_from: str = "block_13",
    batchnorm: BatchNormMode = "frozen",
    head_activation: str | None = "relu",
    pooling: Literal["max", "avg"] = "max",
) -> keras.Model:
    """Build the embedder.

    ``head_activation``: ``"relu"`` (the method's head) or None (a linear head, for distillation).
    ``pooling``: global ``max`` (the method's) or ``avg`` pooling of the last feature map.

    ``trainable``: ``frozen`` trains the head only; ``partial`` trains from the block named by
    ``trainable_from`` upward; ``full`` trains every convolution.

    ``batchnorm``: ``frozen`` runs every BatchNorm layer in inference mode: the shipped ImageNet
    weights hold identity statistics with the convolution biases folded into beta, and batch
    statistics would disturb them. ``train`` lets the BatchNorm layers of the *trainable*
    blocks use batch statistics while training (layers below stay frozen): with identity
    statistics BatchNorm normalises nothing, and an unnormalised network fine-tuned at the
    method's learning rate diverges.
    """
    if trainable not in ("frozen", "partial", "full"):
        raise ValueError(f"trainable must be frozen, partial or full, got {trainable!r}")
    if backbone_weights is not None and alpha != 1.0:
        raise ValueError("the shipped ImageNet weights are for alpha 1.0; pass backbone_weights=None for other widths")
    if backbone_weights is not None and not Path(backbone_weights).exists():
        raise FileNotFoundError(f"backbone weights not found at {backbone_weights}: see ../shared/weights/")
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    backbone = keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False, weights=None, pooling=pooling
    )
    if backbone_weights is not None:
        backbone.load_weights(str(backbone_weights))
    features = backbone(scaled)
    dense = keras.layers.Dense(embedding_size, activation=head_activation, name="embedding_dense")(features)
    outputs = keras.layers.UnitNormalization(axis=-1, name="l2_normalise")(dense)
    model = keras.Model(inputs, outputs, name=f"facegate_mobilenetv2_{alpha}_{input_size}_{embedding_size}")
    set_trainable(model, trainable, trainable_from, batchnorm)
    return model


def backbone_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def set_trainable(model: keras.Model, mode: TrainableMode, trainable_from: str = "block_13", batchnorm: BatchNormMode = "frozen") -> None:
    if batchnorm not in ("frozen", "train"):
        raise ValueError(f"batchnorm must be frozen or train, got {batchnorm!r}")
    backbone = backbone_of(model)
    backbone.trainable = mode != "frozen"
    if mode != "frozen":
        seen = mode == "full"
        for layer in backbone.layers:
            if layer.name.startswith(trainable_from):
                seen = True
            layer.trainable = seen
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = layer.trainable and batchnorm == "train"
            if layer.trainable:
                # Keras' MobileNetV2 uses momentum 0.999: after a CPU-sized run of ~2k steps the
                # moving statistics would still hold 13% of the identity start values.
                layer.momentum = 0.99


def split_at(model: keras.Model, trainable_from: str) -> tuple[keras.Model, keras.Model]:
    """Split the embedder into (trunk, top) at the input of block ``trainable_from``.

    The top shares its layers with ``model``: training it trains the full embedder. Used to
    cache the frozen trunk's outputs so a CPU only runs the trainable part each step.
    Only blocks without a skip connection across the cut are valid cut points (a stride-2
    block or the first block of a stage, e.g. block_13 or block_6), or ``head``: the pooled
    backbone output, for training the head alone.
    """
    if trainable_from == "head":
        # Everything below the head is frozen: the trunk is the whole pooled backbone.
        backbone = backbone_of(model)
        pixels = keras.Input(model.input.shape[1:], name="pixels")
        trunk = keras.Model(pixels, backbone(model.get_layer("to_unit_range")(pixels)), name="trunk")
        features_in = keras.Input(backbone.output.shape[1:], name="trunk_features")
        top = keras.Model(features_in, model.get_layer("l2_normalise")(model.get_layer("embedding_dense")(features_in)), name="top")
        return trunk, top
    backbone = backbone_of(model)
    cut = backbone.get_layer(f"{trainable_from}_expand").input
    trunk_backbone = keras.Model(backbone.input, cut)
    pixels = keras.Input(model.input.shape[1:], name="pixels")
    scaled = model.get_layer("to_unit_range")(pixels)
    trunk = keras.Model(pixels, trunk_backbone(scaled), name="trunk")

    features_in = keras.Input(cut.shape[1:], name="trunk_features")
    x = features_in
    start = [layer.name for layer in backbone.layers].index(f"{trainable_from}_expand")
    tensors: dict[str, object] = {}
    for layer in backbone.layers[start:]:
        inbound = layer._inbound_nodes[0].input_tensors
        args = [tensors.get(t._keras_history.operation.name, x) for t in inbound]
        out = layer(args if len(args) > 1 else args[0])
        tensors[layer.name] = out
    x = out
    x = model.get_layer("embedding_dense")(x)
    x = model.get_layer("l2_normalise")(x)
    top = keras.Model(features_in, x, name="top")
    return trunk, top


def recalibrate_batchnorm(model: keras.Model, images: np.ndarray, batch: int = 64) -> int:
    """Give every BatchNorm layer the statistics of face crops without changing what the model computes.

    The shared ImageNet weights hold identity statistics (mean 0, variance 1) with the
    convolution biases folded into beta, so in training mode BatchNorm would swap in batch
    statistics and change the network's function at step one. Here each layer's moving mean
    and variance become the per-channel statistics of its input on ``images``, and gamma and
    beta are rescaled so that inference output is unchanged; afterwards batch statistics
    are close to the moving ones and the layers can train in training mode from a
    pretrained start. Returns the number of layers recalibrated.

    Every layer's input is measured in one pass of the unchanged model: recalibrating a
    layer does not change its output, so it does not change the inputs of the layers above.
    """
    backbone = backbone_of(model)
    layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(backbone.input, [layer.input for layer in layers])
    scale = model.get_layer("to_unit_range")
    sums: list[np.ndarray] = [np.zeros(int(layer.input.shape[-1])) for layer in layers]
    squares: list[np.ndarray] = [np.zeros(int(layer.input.shape[-1])) for layer in layers]
    count = 0
    for start in range(0, len(images), batch):
        x = scale(np.asarray(images[start : start + batch], dtype=np.float32))
        outputs = probe(x, training=False)
        for i, out in enumerate(outputs):
            values = np.asarray(out, dtype=np.float64).reshape(-1, out.shape[-1])
            sums[i] += values.sum(axis=0)
            squares[i] += (values**2).sum(axis=0)
        count += len(x)
    for i, layer in enumerate(layers):
        pixels = count * int(np.prod(layer.input.shape[1:-1]))
        mean = sums[i] / pixels
        var = np.maximum(squares[i] / pixels - mean**2, 1e-6)
        gamma, beta, old_mean, old_var = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
        eps = layer.epsilon
        ratio = gamma / np.sqrt(old_var + eps)
        new_gamma = ratio * np.sqrt(var + eps)
        new_beta = beta - ratio * old_mean + ratio * mean
        layer.set_weights([w.astype(np.float32) for w in (new_gamma, new_beta, mean, var)])
    return len(layers)
