"""The one image loader: every command, the face front end and the training data reader open pictures with it.

    from editkit.images import load_image
    pixels = load_image("photo.jpg")   # (H, W, 3) uint8 RGB, upright

What it does with awkward files (docs/reliability.md lists every case with its test):

- the pixel count is read from the header and checked before anything is decoded: an image above `max_pixels`
  (64 MP by default) is refused, so a small file declaring huge dimensions (a decompression bomb) costs nothing;
- the whole image is decoded at once, so a truncated or corrupt file fails here and not later;
- the EXIF orientation is applied (a phone photo comes out upright);
- every mode becomes RGB uint8: grayscale and palette images are expanded, CMYK is converted without colour
  management, 16-bit images are scaled to 8 bits (not clipped), and transparent pixels are composited on white
  (the background of cut-out portraits; any fixed colour would do, white is the common one);
- an animated or multi-page image (GIF, APNG, WebP, TIFF) gives its first frame and an `EditkitWarning` saying so
  (camera MPO files, whose extra frames are depth maps or previews, give their first frame silently);
- anything else that goes wrong is an `ImageError`: one line naming the file and what to do.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from editkit.errors import EditkitWarning, ImageError, one_line

MAX_PIXELS = 64_000_000                                   # 8000 x 8000; a 4K frame is 8.3 MP
READABLE = "JPEG, PNG, WebP, BMP, TIFF or GIF"
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")     # 16-bit (and 32-bit integer) grey: 0..65535 -> 0..255
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
SILENT_MULTI_FRAME = ("MPO",)                             # camera JPEGs: frame 0 is the photo


def load_image(path, max_pixels: int = MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array, upright by its EXIF orientation (see the module docstring).

    `name` is what error messages call the file (default: the path), e.g. an upload's original file name.
    """
    path = Path(path)
    name = name or str(path)
    if path.is_dir():
        raise ImageError(f"{name}: is a folder, not an image file")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: the file is empty (0 bytes); copy or export the image again")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings (bomb size, corrupt EXIF): we decide below
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(f"{name}: the image is {width} x {height} pixels ({width * height / 1e6:.0f} "
                                     f"MP), more than the {max_pixels / 1e6:g} MP editkit decodes (a guard against "
                                     "decompression bombs); downscale it first")
                frames, kind = getattr(image, "n_frames", 1), image.format
                image.load()  # decode everything now: a truncated file fails here
                pixels = to_rgb(ImageOps.exif_transpose(image), name)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except PermissionError:
        raise ImageError(f"{name}: cannot read the file (permission denied)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: the image declares far more than {max_pixels / 1e6:g} MP (a decompression bomb?); "
                         "downscale it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file ({READABLE} expected)") from None
    except Exception as e:  # any failure inside the decoder means the bytes are damaged
        detail = one_line(e)[:120] or type(e).__name__
        raise ImageError(f"{name}: the image is damaged and cannot be decoded ({detail}); "
                         "re-export or download it again") from None
    if frames > 1 and kind not in SILENT_MULTI_FRAME:
        warnings.warn(f"{name}: {kind} image with {frames} frames; using the first one", EditkitWarning,
                      stacklevel=2)
    return pixels


def to_rgb(image: Image.Image, name: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 RGB array of a decoded Pillow image of any mode (see the module docstring)."""
    if image.mode in WIDE_MODES:  # Pillow's own conversion clips these at 255 instead of scaling
        grey = np.round(np.clip(np.asarray(image, np.float64), 0, 65535) / 257).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise ImageError(f"{name}: a floating-point image has no standard range; save it as an 8- or 16-bit image")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.array(image.convert("RGB"), dtype=np.uint8)
