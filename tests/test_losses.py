"""The pair loss and batch metrics on hand-built batches whose values are worked out by hand.

Batches have bs = 2 identities: rows 0 and 2 are identity A, rows 1 and 3 identity B, and
the label is ``pair_mask(2)``. With unit vectors, the method's distance ``sum((a-b)^2)/2`` is
0 for identical vectors and 1 for orthogonal ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.data import pair_mask
from training.losses import (
    PairLoss,
    distance_matrix,
    mean_negative,
    mean_positive,
    pair_accuracy,
    pair_loss,
    pair_metrics,
)

E1, E2, E3 = np.eye(3, dtype=np.float32)
MASK = pair_mask(2)


def batch(a0: np.ndarray, b0: np.ndarray, a1: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """Rows in pair-batch order: A's first image, B's first, A's second, B's second."""
    return np.stack([a0, b0, a1, b1]).astype(np.float32)


def unit(v: list[float]) -> np.ndarray:
    v_arr = np.asarray(v, dtype=np.float32)
    return v_arr / np.linalg.norm(v_arr)


PERFECT = batch(E1, E2, E1, E2)  # positives identical, negatives orthogonal
BAD = batch(E1, E1, E2, E2)  # positives orthogonal, negatives identical


def loss_value(embeddings: np.ndarray, negative_clip: float = 0.5) -> float:
    return float(tf.reduce_mean(pair_loss(MASK, embeddings, negative_clip)))


def test_distance_matrix_of_identical_and_orthogonal_vectors() -> None:
    """PERFECT: rows 0, 2 are e1 and rows 1, 3 are e2, so D is 0 within and 1 across."""
    expected = np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=np.float32)
    np.testing.assert_allclose(distance_matrix(PERFECT).numpy(), expected, atol=1e-6)


def test_perfect_batch_has_near_zero_loss() -> None:
    """Every positive distance is 0 and every hardest negative is 1.

    Row 0: D + mask = [0+2, 1+0, 0+1, 1+0] -> hardest negative 1 -> min(1, .5)/.5 = 1.
    BCE(0, target 0) = BCE(1, target 1) = 0, up to the 1e-7 clipping: ~1e-7.
    """
    assert loss_value(PERFECT) == pytest.approx(0.0, abs=1e-6)


def test_bad_batch_loss_is_exact() -> None:
    """Every positive distance is 1 and every hardest negative is 0.

    Both are clipped into [1e-7, 1 - 1e-7] in float32. 1 - 1e-7 rounds to 1 - 2^-23 in float32,
    so BCE(positive) = -ln(1 - (1 - 2^-23)) = 23 ln 2 = 15.942385; the negative 0 becomes
    float32(1e-7), so BCE(negative) = -ln(1e-7) = 7 ln 10 = 16.118096. Each row's loss is
    their mean: (23 ln 2 + 7 ln 10) / 2 = 16.030240.
    """
    expected = (23 * math.log(2) + 7 * math.log(10)) / 2
    assert loss_value(BAD) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(16.030240, abs=1e-6)


@pytest.mark.parametrize("negative_distance", [0.5, 0.6, 0.9, 1.0])
def test_negatives_beyond_the_clip_give_the_same_loss(negative_distance: float) -> None:
    """A = a, B = b with a.b = 1 - d, both pairs identical (positive distance 0).

    With the clip at 0.5, every negative distance d >= 0.5 maps to min(d, .5)/.5 = 1 and the
    loss stays at the perfect batch's ~0: the loss stops pushing far negatives apart.
    """
    a = np.array([1.0, 0.0], dtype=np.float32)
    cos = 1.0 - negative_distance
    b = np.array([cos, math.sqrt(1.0 - cos * cos)], dtype=np.float32)
    assert loss_value(batch(a, b, a, b)) == pytest.approx(loss_value(batch(E1[:2], E2[:2], E1[:2], E2[:2])), abs=1e-5)


def test_negative_inside_the_clip_is_penalised() -> None:
    """d = 0.3 < 0.5: negative term min(.3, .5)/.5 = 0.6, so the row loss is -ln(0.6)/2 = 0.255413
    (the positive term of an identical pair is ~1e-7)."""
    a = np.array([1.0, 0.0], dtype=np.float32)
    b = np.array([0.7, math.sqrt(1 - 0.49)], dtype=np.float32)
    assert loss_value(batch(a, b, a, b)) == pytest.approx(-math.log(0.6) / 2, abs=1e-5)


def test_metrics_on_perfect_and_bad_batches() -> None:
    """PERFECT: positives (0,2),(2,0),(1,3),(3,1) are all 0; the 8 negatives all 1; every row's
    nearest other row is its partner. BAD: positives all 1; negatives (0,1),(1,0),(2,3),(3,2)
    are 0 and (0,3),(3,0),(1,2),(2,1) are 1, mean 0.5; every row's nearest is a negative."""
    assert float(mean_positive(MASK, PERFECT)) == pytest.approx(0.0, abs=1e-6)
    assert float(mean_negative(MASK, PERFECT)) == pytest.approx(1.0, abs=1e-6)
    assert float(pair_accuracy(MASK, PERFECT)) == 1.0
    assert float(mean_positive(MASK, BAD)) == pytest.approx(1.0, abs=1e-6)
    assert float(mean_negative(MASK, BAD)) == pytest.approx(0.5, abs=1e-6)
    assert float(pair_accuracy(MASK, BAD)) == 0.0


def test_pair_accuracy_counts_rows() -> None:
    """A = (e1, e1): rows 0 and 2 find each other at distance 0 -> correct.
    B = ((e1+e2)/sqrt2, (e3 + 0.1 e1)/|.|): row 1 is 1 - 1/sqrt2 = .293 from rows 0 and 2 but
    .930 from its partner; row 3 is 1 - .1/sqrt(1.01) = .900 from rows 0 and 2 and .930 from
    row 1. Both B rows are wrong: accuracy 2/4 = 0.5. mean_pos = (0 + 0 + .930 + .930)/4."""
    b0 = unit([1, 1, 0])
    b1 = unit([0.1, 0, 1])
    embeddings = batch(E1, b0, E1, b1)
    d_b = 1.0 - float(b0 @ b1)
    assert d_b == pytest.approx(1 - 0.1 / (math.sqrt(1.01) * math.sqrt(2)), abs=1e-6)
    assert float(pair_accuracy(MASK, embeddings)) == 0.5
    assert float(mean_positive(MASK, embeddings)) == pytest.approx(d_b / 2, abs=1e-6)


def test_pair_loss_config_round_trip_and_validation() -> None:
    loss = PairLoss(negative_clip=0.3, name="custom_pair_loss")
    restored = PairLoss.from_config(loss.get_config())
    assert restored.negative_clip == pytest.approx(0.3)
    assert restored.name == "custom_pair_loss"
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="negative_clip"):
            PairLoss(negative_clip=bad)


def test_keras_loss_matches_pure_function() -> None:
    """Keras averages the per-row losses: the same number as the batch mean of pair_loss."""
    assert float(PairLoss()(MASK, BAD)) == pytest.approx(loss_value(BAD), rel=1e-6)


def test_compiled_model_save_reload_round_trip(tmp_path: Path) -> None:
    """A model compiled with PairLoss and pair_metrics saves and reloads with its loss config,
    weights and metric values intact (the custom objects are registered)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(3, activation="relu")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=PairLoss(negative_clip=0.4), metrics=pair_metrics())
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    model.fit(x, MASK, batch_size=4, epochs=1, verbose=0)
    before = model.evaluate(x, MASK, batch_size=4, verbose=0, return_dict=True)
    model.save(tmp_path / "tiny.keras")
    reloaded = keras.models.load_model(tmp_path / "tiny.keras")
    assert isinstance(reloaded.loss, PairLoss)
    assert reloaded.loss.negative_clip == pytest.approx(0.4)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    after = reloaded.evaluate(x, MASK, batch_size=4, verbose=0, return_dict=True)
    assert set(after) == set(before) == {"loss", "mean_pos", "mean_neg", "accuracy"}
    for key in before:
        assert after[key] == pytest.approx(before[key], abs=1e-5)
