"""The embedder: MobileNetV2 backbone, a dense head, L2 normalisation.

The method's head is Dense(256, relu): unit vectors with non-negative components. The
distilled embedder uses a linear head the size of the teacher's embedding (192) so its vectors
live on the whole sphere, like the teacher's, and can be regressed onto them directly.

The model takes RGB pixels 0..255 (float32) and scales them to -1..1 itself, so the exported
TFLite file and the Keras model see exactly what the aligner produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import keras
import numpy as np

from app.core.config import SHARED_DIR

DEFAULT_WEIGHTS = SHARED_DIR / "weights" / "mobilenet_v2_1.0_no_top.weights.h5"
TrainableMode = Literal["frozen", "partial", "full"]
BatchNormMode = Literal["frozen", "train"]
Pooling = Literal["max", "avg", "gdc"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
OUTPUT_STRIDES = (32, 16)
# The blocks after MobileNetV2's last downsampling (block_13's depthwise convolution, stride 2).
_TAIL_DEPTHWISE = ("block_14_depthwise", "block_15_depthwise", "block_16_depthwise")


def build_embedder(
    input_size: int = 160,
    alpha: float = 1.0,
    embedding_size: int = 256,
    backbone_weights: Path | None = DEFAULT_WEIGHTS,
    trainable: TrainableMode = "full",
    trainable_from: str = "block_13",
    batchnorm: BatchNormMode = "frozen",
    head_activation: str | None = "relu",
    pooling: Pooling = "max",
    output_stride: int = 32,
) -> keras.Model:
    """Build the embedder.

    ``head_activation``: ``"relu"`` (the method's head) or None (a linear head, for distillation).
    ``pooling``: global ``max`` (the method's) or ``avg`` pooling of the last feature map, or
    ``gdc``: a global depthwise convolution (MobileFaceNet's "GDConv"), one learned weight per
    channel and position of the last feature map (4x4 at 112 px), so the embedding can weigh
    the eyes differently from the chin where average pooling mixes every position alike. It
    starts as exactly average pooling (every weight 1/positions), so weights trained with
    ``avg`` carry over unchanged (``transfer_weights``).

    ``output_stride``: 32 is MobileNetV2 as published (a 4x4 last feature map at 112 px); 16
    drops the last downsampling and dilates the layers after it (:func:`dense_tail`), for a 7x7
    map at 112 px, the size MobileFaceNet pools over.

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
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if backbone_weights is not None and not Path(backbone_weights).exists():
        raise FileNotFoundError(f"backbone weights not found at {backbone_weights}: see ../shared/weights/")
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    backbone = keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False, weights=None, pooling=None if pooling == "gdc" else pooling
    )
    if backbone_weights is not None:
        backbone.load_weights(str(backbone_weights))
    if output_stride == 16:
        backbone = dense_tail(backbone)
    features = backbone(scaled)
    if pooling == "gdc":
        height, width = int(features.shape[1]), int(features.shape[2])
        features = keras.layers.DepthwiseConv2D(
            (height, width),
            padding="valid",
            use_bias=False,
            depthwise_initializer=keras.initializers.Constant(1.0 / (height * width)),
            name="gdc",
        )(features)
        features = keras.layers.Flatten(name="gdc_flat")(features)
    dense = keras.layers.Dense(embedding_size, activation=head_activation, name="embedding_dense")(features)
    outputs = keras.layers.UnitNormalization(axis=-1, name="l2_normalise")(dense)
    model = keras.Model(inputs, outputs, name=f"facegate_mobilenetv2_{alpha}_{input_size}_{embedding_size}")
    set_trainable(model, trainable, trainable_from, batchnorm)
    return model


def dense_tail(backbone: keras.Model) -> keras.Model:
    """``backbone`` (a Keras MobileNetV2) with output stride 16 instead of 32, same weights.

    block_13's depthwise convolution keeps stride 1 (padded to keep the size) and the three
    depthwise convolutions after it are dilated by 2 (the "atrous" trick of DeepLab), so every
    position of the original, strided map is computed exactly as before and sits at every other
    position of a map twice as fine: 7x7 instead of 4x4 at 112 px (``spread_gdc`` puts a
    trained ``gdc`` kernel on those positions). At 112 px the network then costs 1.65x the
    multiply-adds (274 against 166 MFLOP a face) and 1.6x the LiteRT time (docs/model.md).
    """
    config = backbone.get_config()
    for layer in config["layers"]:
        name = layer["config"]["name"]
        if name == "block_13_pad":
            layer["config"]["padding"] = ((1, 1), (1, 1))
        elif name == "block_13_depthwise":
            layer["config"]["strides"] = (1, 1)
        elif name in _TAIL_DEPTHWISE:
            layer["config"]["dilation_rate"] = (2, 2)
    dense = keras.Model.from_config(config)
    dense.set_weights(backbone.get_weights())
    return dense


def output_stride_of(model: keras.Model) -> int:
    """32 for MobileNetV2 as published, 16 for :func:`dense_tail`."""
    strides = backbone_of(model).get_layer("block_13_depthwise").strides
    return 16 if tuple(strides) == (1, 1) else 32


def spread_gdc(kernel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``gdc`` kernel of the stride-32 map placed where :func:`dense_tail` computes the same features.

    A map of ``s`` positions becomes ``2s - 1`` (odd input of block_13, e.g. 7 -> 4 at 112 px:
    the original positions are the even ones) or ``2s`` (even input, e.g. 10 -> 5 at 160 px:
    the odd ones); the new positions start at weight 0, so the model computes what it did.
    """
    height, width = kernel.shape[:2]
    offsets = (size[0] - (2 * height - 1), size[1] - (2 * width - 1))
    if not all(o in (0, 1) for o in offsets):
        raise ValueError(f"a {height}x{width} gdc kernel does not spread onto a {size[0]}x{size[1]} map")
    spread = np.zeros((*size, *kernel.shape[2:]), dtype=kernel.dtype)
    spread[offsets[0] :: 2, offsets[1] :: 2] = kernel
    return spread


def backbone_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def transfer_weights(source: keras.Model, target: keras.Model) -> list[str]:
    """Copy ``source``'s weights into ``target`` layer by layer (by name, the backbone by position).

    Every layer of ``source`` with weights must find a layer of the same name and weight shapes
    in ``target``; the target's layers left untouched (e.g. a new ``gdc`` pooling, which starts
    as average pooling) are returned by name. Raises when the two models disagree elsewhere.
    A stride-32 model's ``gdc`` kernel goes onto a stride-16 target through :func:`spread_gdc`
    (the backbone's weights are the same shapes at either stride).
    """
    touched: set[str] = set()
    src_backbone, dst_backbone = backbone_of(source), backbone_of(target)
    src_layers = [(layer.name, layer) for layer in source.layers if layer is not src_backbone]
    dst_by_name = {layer.name: layer for layer in target.layers if layer is not dst_backbone}
    pairs = [(src_backbone, dst_backbone)] + [(layer, dst_by_name.get(name)) for name, layer in src_layers if layer.weights]
    for src, dst in pairs:
        if dst is None:
            raise ValueError(f"layer {src.name} of the source has no counterpart in the target")
        src_w, dst_w = src.get_weights(), dst.get_weights()
        if src.name == "gdc" and src_w[0].shape != dst_w[0].shape and output_stride_of(source) > output_stride_of(target):
            src_w = [spread_gdc(src_w[0], dst_w[0].shape[:2])]
        if [w.shape for w in src_w] != [w.shape for w in dst_w]:
            raise ValueError(f"layer {src.name}: weight shapes {[w.shape for w in src_w]} vs {[w.shape for w in dst_w]}")
        dst.set_weights(src_w)
        touched.add(dst.name)
    return [layer.name for layer in target.layers if layer.weights and layer.name not in touched]


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
    block or the first block of a stage, e.g. block_13 or block_6), or ``head``: the backbone's
    output (pooled, or the last feature map for ``gdc``), for training the head alone.
    """
    if trainable_from == "head":
        # Everything below the head is frozen: the trunk is the whole backbone.
        backbone = backbone_of(model)
        pixels = keras.Input(model.input.shape[1:], name="pixels")
        trunk = keras.Model(pixels, backbone(model.get_layer("to_unit_range")(pixels)), name="trunk")
        features_in = keras.Input(backbone.output.shape[1:], name="trunk_features")
        top = keras.Model(features_in, _head(model, features_in), name="top")
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
    top = keras.Model(features_in, _head(model, out), name="top")
    return trunk, top


def _head(model: keras.Model, features: object) -> object:
    """The layers above the backbone (pooling when it is ``gdc``, the dense head, normalisation) applied to ``features``."""
    x = features
    names = {layer.name for layer in model.layers}
    for name in ("gdc", "gdc_flat", "embedding_dense", "l2_normalise"):
        if name in names:
            x = model.get_layer(name)(x)
    return x


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
