"""Inputs built in the test: hostile uploads, synthetic scenes from real faces, store snapshots.

Nothing here is committed as a file: every image is made from numbers (or from a photo in
../shared) when a test asks for it.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from sqlalchemy import func, select

from app.matching.fusion import fuse, l2_normalise
from app.services.runtime import Runtime
from app.store import crud
from app.store.models import ApiKey, DeletionRequest, FrameEmbedding, Person, StoreState, Template

# -- encoders ----------------------------------------------------------------------------------


def jpeg(image: Image.Image | np.ndarray, quality: int = 92) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def grey_jpeg(side: int = 200, level: int = 128) -> bytes:
    """A plain grey picture: a valid image with no face in it."""
    return jpeg(Image.new("RGB", (side, side), (level, level, level)))


def noise_jpeg(side: int = 200, seed: int = 0) -> bytes:
    return jpeg(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    # Starts with bytes no image format claims, so Pillow cannot mistake it for one.
    return b"\x00garbage" + np.random.default_rng(seed).bytes(n)


def truncated_jpeg(seed: int = 0) -> bytes:
    """A real JPEG cut in half: the header is valid, the scan data is not all there."""
    data = noise_jpeg(256, seed)
    return data[: len(data) // 2]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def zero_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG of zeros, streamed through zlib row by row.

    All-zero rows compress about 1000:1, so the file is tiny whatever it declares; no pixel
    array is ever held in memory here.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = []
    rows_per_chunk = max(1, (1 << 22) // len(row))
    for start in range(0, height, rows_per_chunk):
        parts.append(compressor.compress(row * min(rows_per_chunk, height - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def png_bomb(side: int = 20_000) -> bytes:
    """A decompression bomb: a few tens of KB that declare 400 megapixels."""
    return zero_png(side, side)


def huge_jpeg(width: int = 7100, height: int = 7100) -> bytes:
    """A small JPEG whose header declares ``width x height`` (50 megapixels by default).

    Encoding a real 50 MP image would take seconds; the decoder must refuse it from the
    header anyway, so the frame header's dimensions are rewritten in a tiny valid JPEG.
    """
    data = bytearray(jpeg(Image.new("RGB", (16, 16), (90, 90, 90))))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker in the encoded JPEG")


# -- scenes made from real faces ---------------------------------------------------------------


def _image(photo: bytes) -> Image.Image:
    return Image.open(io.BytesIO(photo)).convert("RGB")


def two_faces(a: bytes, b: bytes) -> bytes:
    """Two people side by side in one frame."""
    left, right = _image(a), _image(b)
    scene = Image.new("RGB", (left.width + right.width + 20, max(left.height, right.height)), (128, 128, 128))
    scene.paste(left, (0, 0))
    scene.paste(right, (left.width + 20, 0))
    return jpeg(scene)


def small_face(photo: bytes, factor: float = 0.5) -> bytes:
    """The photo scaled down so the face is about 40 px wide (below MIN_FACE_PX)."""
    image = _image(photo)
    return jpeg(image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS))


def dark_face(photo: bytes, gain: float = 0.2) -> bytes:
    """The photo at a fifth of its brightness: the face is found but too dark to use."""
    return jpeg((np.asarray(_image(photo), dtype=np.float32) * gain).astype(np.uint8))


def blurred(photo: bytes, radius: float = 4.0) -> bytes:
    return jpeg(_image(photo).filter(ImageFilter.GaussianBlur(radius)))


# -- the store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreCounts:
    persons: int
    templates: int
    frame_embeddings: int
    deletion_requests: int
    api_keys: int
    generation: int
    threshold: float | None


def store_counts(rt: Runtime) -> StoreCounts:
    """What a refused request must leave untouched (audit events are expected to grow)."""
    with rt.sessions() as session:

        def count(model: type) -> int:
            return int(session.execute(select(func.count()).select_from(model)).scalar_one())

        state = session.execute(select(StoreState.generation, StoreState.threshold).where(StoreState.id == 1)).one()
        return StoreCounts(
            persons=count(Person),
            templates=count(Template),
            frame_embeddings=count(FrameEmbedding),
            deletion_requests=count(DeletionRequest),
            api_keys=count(ApiKey),
            generation=int(state.generation),
            threshold=state.threshold,
        )


def seed_person(
    rt: Runtime, name: str = "Seeded", frames: int = 3, seed: int = 0, vectors: np.ndarray | None = None, sample_jpeg: bytes | None = None
) -> int:
    """A person written straight to the store (no faces needed): random unit-vector frames,
    or the given ``vectors`` (one vector alone becomes exactly the template)."""
    if vectors is None:
        vectors = np.random.default_rng(seed).standard_normal((frames, rt.package.embedding_size)).astype(np.float32)
    vectors = l2_normalise(np.atleast_2d(vectors))
    with rt.sessions() as session:
        person = crud.create_person(session, name=name, metadata={"seeded": True}, sample_jpeg=sample_jpeg)
        crud.add_frame_embeddings(session, person_id=person.id, model_id=rt.model_id, vectors=vectors)
        crud.put_template(session, person_id=person.id, model_id=rt.model_id, vector=fuse(vectors), frame_count=len(vectors))
        session.commit()
        return person.id


def unit(rt: Runtime, *weights: float) -> np.ndarray:
    """A unit vector in the model's embedding space with these leading coordinates."""
    vector = np.zeros(rt.package.embedding_size, dtype=np.float32)
    vector[: len(weights)] = weights
    return l2_normalise(vector)


def enrol(http: Any, name: str, photos: list[bytes]) -> dict[str, Any]:
    """Enrol through the API; the person as answered."""
    from tests.service.conftest import multipart

    response = http.post("/v1/persons", **multipart(photos, name=name))
    assert response.status_code == 201, response.text
    return response.json()
