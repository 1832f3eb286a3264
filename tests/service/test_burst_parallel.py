"""A burst's frames are decoded and aligned in parallel: the answer must not depend on how."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.errors import DomainError
from app.services.runtime import Runtime
from app.vision.pipeline import AlignerPool, process_burst


def test_parallel_frames_give_the_sequential_crops_and_embeddings(runtime: Runtime, faces: dict[str, list[bytes]]) -> None:
    frames = next(iter(faces.values()))[:6]
    sequential = AlignerPool(1, runtime.package.input_size)
    try:
        one = process_burst(frames, sequential, runtime.embedder, runtime.limits)
    finally:
        sequential.close()
    four = process_burst(frames, runtime.aligners, runtime.embedder, runtime.limits)
    assert one.used == four.used >= 4
    assert [r.reason for r in one.reports] == [r.reason for r in four.reports]
    assert one.crops is not None and four.crops is not None
    assert np.array_equal(one.crops, four.crops)  # same pixels, frame order kept
    assert np.array_equal(one.embeddings, four.embeddings)  # bit-identical: no decision moves
    # One sequential embedding per crop gives the same vectors as the burst's batched call.
    single = np.concatenate([runtime.embedder.embed(crop[None]) for crop in four.crops])
    assert np.array_equal(single, four.embeddings)
    assert four.timings["decode"] > 0 and four.timings["align"] > 0


@pytest.mark.parametrize(("bad", "named"), [((3,), 3), ((1, 4), 1), ((0,), 0)])
def test_an_undecodable_frame_rejects_the_burst_naming_the_first(
    runtime: Runtime, faces: dict[str, list[bytes]], bad: tuple[int, ...], named: int
) -> None:
    frames = list(next(iter(faces.values()))[:5])
    for i in bad:
        frames[i] = frames[i][: len(frames[i]) // 3]  # a truncated JPEG
    with pytest.raises(DomainError) as caught:
        process_burst(frames, runtime.aligners, runtime.embedder, runtime.limits)
    assert caught.value.code == "corrupt_image"
    assert caught.value.details == {"frame": named}
