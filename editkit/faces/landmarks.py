"""dlib's 68-point shape predictor (iBUG 300-W layout; its training data's terms exclude commercial use)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from editkit.weights import dlib_model_path


@lru_cache(maxsize=1)
def _predictor():
    import dlib

    return dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))


def landmarks68(image: np.ndarray, box) -> np.ndarray:
    """(68, 2) float32 landmarks of the face in `box` (x0, y0, x1, y1) of an RGB uint8 photo, in pixel
    coordinates with pixel centres at +0.5 (as editkit.cameras.project)."""
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = _predictor()(np.ascontiguousarray(image, dtype=np.uint8), dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32) + 0.5  # dlib puts pixel centres at integers
