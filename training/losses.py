"""The method's pair loss and batch metrics, as pure functions plus a registered Keras loss.

A pair batch holds ``bs`` identities, two images each: rows ``i`` and ``i + bs`` are the same
person. Its label is the static ``2bs x 2bs`` mask from :func:`training.data.pair_mask`:
2 on the diagonal, 1 for the positive partner, 0 for every negative.

Distances are the method's normalised Euclidean distance ``sum((a - b)^2) / 2``, which for
unit vectors equals ``1 - a.b``: 0..1 for the non-negative vectors of the method's ReLU head,
0..2 for vectors on the whole sphere (the distilled embedder's).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

NEGATIVE_CLIP = 0.5
_EPSILON = 1e-7


def distance_matrix(embeddings: tf.Tensor) -> tf.Tensor:
    """Pairwise normalised distances of unit vectors: ``sum((a - b)^2) / 2``."""
    embeddings = tf.convert_to_tensor(embeddings, dtype=tf.float32)
    squared = tf.reduce_sum(tf.square(embeddings), axis=1)
    gram = tf.matmul(embeddings, embeddings, transpose_b=True)
    dist = (squared[:, None] + squared[None, :] - 2.0 * gram) / 2.0
    # Rounding can leave tiny negatives on the diagonal.
    return tf.maximum(dist, 0.0)


def pair_terms(mask: tf.Tensor, embeddings: tf.Tensor, negative_clip: float = NEGATIVE_CLIP) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-row positive distance and clipped hardest-negative distance.

    The method's ``min(D + mask)`` pushes the diagonal (+2) and the partner (+1) above every
    negative when distances stay within 0..1 (non-negative vectors); embeddings on the whole
    sphere reach 2, so the masked entries are lifted above any distance instead (the same
    result in the method's regime). Clipping at ``negative_clip`` stops the loss from
    pushing negatives apart once they are far enough; dividing by it maps them to 0..1.
    """
    mask = tf.cast(mask, tf.float32)
    dist = distance_matrix(embeddings)
    hardest_negative = tf.reduce_min(tf.where(mask > 0.0, 4.0, dist), axis=1)
    negative = tf.minimum(hardest_negative, negative_clip) / negative_clip
    positive = tf.reduce_sum(dist * tf.cast(tf.equal(mask, 1.0), tf.float32), axis=1)
    return positive, negative


def pair_loss(mask: tf.Tensor, embeddings: tf.Tensor, negative_clip: float = NEGATIVE_CLIP) -> tf.Tensor:
    """Per-row loss: the mean of BCE(positive, target 0) and BCE(negative, target 1).

    The batch mean of these rows equals the method's binary cross-entropy averaged over
    all positives and all negatives, because every row holds exactly one of each.
    """
    positive, negative = pair_terms(mask, embeddings, negative_clip)
    positive = tf.clip_by_value(positive, _EPSILON, 1.0 - _EPSILON)
    negative = tf.clip_by_value(negative, _EPSILON, 1.0 - _EPSILON)
    return (-tf.math.log(1.0 - positive) - tf.math.log(negative)) / 2.0


def mean_positive(mask: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
    """Mean distance over the positive entries (mask == 1)."""
    dist = distance_matrix(embeddings)
    selected = tf.cast(tf.equal(tf.cast(mask, tf.float32), 1.0), tf.float32)
    return tf.reduce_sum(dist * selected) / tf.maximum(tf.reduce_sum(selected), 1.0)


def mean_negative(mask: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
    """Mean distance over the negative entries (mask == 0)."""
    dist = distance_matrix(embeddings)
    selected = tf.cast(tf.equal(tf.cast(mask, tf.float32), 0.0), tf.float32)
    return tf.reduce_sum(dist * selected) / tf.maximum(tf.reduce_sum(selected), 1.0)


def pair_accuracy(mask: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
    """Share of rows whose nearest off-diagonal neighbour is their positive partner."""
    mask = tf.cast(mask, tf.float32)
    dist = distance_matrix(embeddings)
    off_diagonal = dist + tf.cast(tf.equal(mask, 2.0), tf.float32) * 1e9
    nearest = tf.argmin(off_diagonal, axis=1)
    partner = tf.argmax(tf.cast(tf.equal(mask, 1.0), tf.float32), axis=1)
    return tf.reduce_mean(tf.cast(tf.equal(nearest, partner), tf.float32))


@keras.saving.register_keras_serializable(package="facegate")
class PairLoss(keras.losses.Loss):
    """Keras wrapper of :func:`pair_loss`; ``y_true`` is the batch's static pair mask."""

    def __init__(self, negative_clip: float = NEGATIVE_CLIP, name: str = "pair_loss", **kwargs: Any):
        if not 0.0 < negative_clip <= 1.0:
            raise ValueError(f"negative_clip must be in (0, 1], got {negative_clip}")
        super().__init__(name=name, **kwargs)
        self.negative_clip = float(negative_clip)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return pair_loss(y_true, y_pred, self.negative_clip)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "negative_clip": self.negative_clip}


for _fn in (mean_positive, mean_negative, pair_accuracy):
    keras.saving.register_keras_serializable(package="facegate")(_fn)


def pair_metrics() -> list[keras.metrics.Metric]:
    """mean_pos, mean_neg and accuracy, averaged over the batches of an epoch."""
    return [
        keras.metrics.MeanMetricWrapper(mean_positive, name="mean_pos"),
        keras.metrics.MeanMetricWrapper(mean_negative, name="mean_neg"),
        keras.metrics.MeanMetricWrapper(pair_accuracy, name="accuracy"),
    ]
