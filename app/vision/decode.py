"""Safe decoding of uploaded frames: JPEG or PNG only, bounded bytes and pixels."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.errors import InvalidInput, TooLarge, UnsupportedMedia

ALLOWED_FORMATS = {"JPEG", "PNG"}


def decode_frame(data: bytes, index: int, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Bytes -> RGB uint8 array, or a domain error (``app.core.errors``) with a stable code naming the frame.

    The header is read before any pixel is decoded, so a 50-megapixel image or a PNG
    decompression bomb is refused without allocating its pixels.
    """
    where = {"frame": index}
    if len(data) == 0:
        raise InvalidInput("empty_frame", f"frame {index} is empty", where)
    if len(data) > max_bytes:
        raise TooLarge("frame_too_large", f"frame {index} has {len(data)} bytes; the limit is {max_bytes}", where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS:
                raise UnsupportedMedia("unsupported_image_format", f"frame {index} is {image.format}; send JPEG or PNG", where)
            width, height = image.size
            if width * height > max_pixels:
                raise TooLarge(
                    "image_too_large",
                    f"frame {index} is {width}x{height} ({width * height} pixels); the limit is {max_pixels}",
                    where,
                )
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (InvalidInput, TooLarge, UnsupportedMedia):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge("decompression_bomb", f"frame {index} expands beyond the pixel limit", where) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMedia("not_an_image", f"frame {index} is not a JPEG or PNG image", where) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(
            "corrupt_image", f"frame {index} could not be decoded ({exc.__class__.__name__}): truncated or damaged", where
        ) from exc
    return np.asarray(rgb, dtype=np.uint8)


# Dataset photos are trusted but still bounded: a stray 100-megapixel scan is refused, not decoded.
FILE_MAX_BYTES = 64 * 1024 * 1024
FILE_MAX_PIXELS = 40_000_000


def read_image_file(path: str | Path) -> np.ndarray:
    """A photo file -> RGB uint8, through the same decoder (and EXIF orientation) as uploaded frames.

    Training, evaluation and tests read photos with this, so they see the pixels serving sees.
    Raises a domain error with the decoder's stable code when the file is not a usable image.
    """
    return decode_frame(Path(path).read_bytes(), 0, FILE_MAX_BYTES, FILE_MAX_PIXELS)
