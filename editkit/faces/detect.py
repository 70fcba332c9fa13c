"""Face detection: MTCNN (facenet-pytorch, weights in its wheel) first, dlib's HOG detector as the fallback.

Faces come back largest first. Each carries the square box that dlib's 68-point predictor expects: dlib trained it
on HOG boxes, so an MTCNN face gets a HOG-like box built from its five keypoints (centred between eyes and mouth,
2.05 eye-to-mouth distances wide; on demo-world renders this puts dlib's points as close to the truth as HOG's own
boxes do, and closer than MTCNN's taller box).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from editkit.errors import EditkitError

DETECTORS = ("auto", "mtcnn", "hog")
MTCNN_MIN_PROB = 0.9
HOG_UPSAMPLE_BELOW = 512  # photos whose shorter side is below this are searched at twice the size (HOG's window
                          # is 80 px: a 128 px render's face, ~60 px wide, is only found upsampled)


@dataclass
class Face:
    """One detected face, in photo pixels (x right, y down)."""

    box: np.ndarray               # (4,) x0, y0, x1, y1 as the detector reports it
    score: float                  # MTCNN probability, or HOG's detection score
    detector: str                 # 'mtcnn' | 'hog'
    keypoints: np.ndarray | None  # (5, 2) MTCNN's eyes, nose, mouth corners (None for HOG)

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))

    def landmark_box(self) -> np.ndarray:
        """(4,) x0, y0, x1, y1 of the square dlib's shape predictor should look in."""
        if self.keypoints is None:
            return self.box
        eyes, mouth = self.keypoints[:2].mean(0), self.keypoints[3:].mean(0)
        centre, half = (eyes + mouth) / 2, 1.025 * np.linalg.norm(mouth - eyes)
        return np.concatenate([centre - half, centre + half])


@lru_cache(maxsize=1)
def _mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


@lru_cache(maxsize=1)
def _hog():
    import dlib

    return dlib.get_frontal_face_detector()


def mtcnn_available() -> bool:
    """True when facenet-pytorch can be imported (it is installed with --no-deps, so it may be absent)."""
    try:
        _mtcnn()
    except ImportError:
        return False
    return True


def detect_mtcnn(image: np.ndarray) -> list[Face]:
    """MTCNN faces with probability >= MTCNN_MIN_PROB."""
    import torch

    with torch.no_grad():
        boxes, probs, points = _mtcnn().detect(image, landmarks=True)
    if boxes is None:
        return []
    probs = np.asarray(probs, np.float64)  # facenet-pytorch returns an object array
    return [Face(np.asarray(b, np.float64), float(p), "mtcnn", np.asarray(k, np.float64))
            for b, p, k in zip(boxes, probs, points) if p >= MTCNN_MIN_PROB]


def detect_hog(image: np.ndarray) -> list[Face]:
    """dlib HOG faces (upsampled once for small photos)."""
    upsample = 1 if min(image.shape[:2]) < HOG_UPSAMPLE_BELOW else 0
    rects, scores, _ = _hog().run(image, upsample, 0.0)
    return [Face(np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float64), float(s), "hog", None)
            for r, s in zip(rects, scores)]


def detect_faces(image: np.ndarray, detector: str = "auto") -> list[Face]:
    """Faces in an RGB uint8 photo (H, W, 3), largest first. 'auto': MTCNN, then HOG when MTCNN finds none or
    facenet-pytorch is not installed."""
    if detector not in DETECTORS:
        raise EditkitError(f"unknown face detector '{detector}' (choose from: {', '.join(DETECTORS)})")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    faces = []
    if detector == "mtcnn" or (detector == "auto" and mtcnn_available()):
        faces = detect_mtcnn(image)
    if detector == "hog" or (detector == "auto" and not faces):
        faces = detect_hog(image)
    return sorted(faces, key=lambda f: -f.area)
