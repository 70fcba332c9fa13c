"""Facial attribute scores from 68 dlib-ordered landmarks, for labelling samples of any EG3D model.

Every score is a ratio of distances in the image, divided by the inter-ocular distance (between the two eye
centres), so it does not depend on the size of the face and changes little with moderate head turns:

| attribute | score | higher means |
|---|---|---|
| `smile` | mouth width (outer corners 48-54) | a wider mouth (smiles widen it) |
| `jaw_open` | inner-lip gap (mean of 61-67, 62-66, 63-65) | a more open mouth |
| `eyes_open` | eye aspect ratio (eyelid gaps over eye width, both eyes) | wider open eyes |
| `eyes_closed` | minus the eye aspect ratio | more closed eyes |
| `brow_raise` | distance from each brow (17-21, 22-26) to its eye centre | raised brows |

Landmarks come from dlib's 68-point shape predictor (`detect_landmarks`). Its model was trained on iBUG 300-W,
whose terms exclude commercial use.
"""

import numpy as np

from editkit.errors import EditkitError

RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)  # the subject's right eye is on the image's left
RIGHT_BROW, LEFT_BROW = slice(17, 22), slice(22, 27)
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))


def _points(landmarks) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[-2:] != (68, 2):
        raise EditkitError(f"landmarks must have shape (68, 2) or (N, 68, 2), got {lm.shape}")
    return lm


def _dist(a, b) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


def inter_ocular(landmarks) -> np.ndarray:
    """Distance between the eye centres (mean of each eye's six points)."""
    lm = _points(landmarks)
    return _dist(lm[..., RIGHT_EYE, :].mean(-2), lm[..., LEFT_EYE, :].mean(-2))


def smile(landmarks) -> np.ndarray:
    """Mouth width over inter-ocular distance."""
    lm = _points(landmarks)
    return _dist(lm[..., 48, :], lm[..., 54, :]) / inter_ocular(lm)


def jaw_open(landmarks) -> np.ndarray:
    """Mean inner-lip gap over inter-ocular distance."""
    lm = _points(landmarks)
    gap = np.mean([_dist(lm[..., a, :], lm[..., b, :]) for a, b in INNER_LIP_PAIRS], axis=0)
    return gap / inter_ocular(lm)


def eyes_open(landmarks) -> np.ndarray:
    """Eye aspect ratio, mean of both eyes: (|p2-p6| + |p3-p5|) / (2 |p1-p4|) over each eye's points p1..p6."""
    lm = _points(landmarks)
    ratios = []
    for eye in (RIGHT_EYE, LEFT_EYE):
        p = lm[..., eye, :]
        lids = _dist(p[..., 1, :], p[..., 5, :]) + _dist(p[..., 2, :], p[..., 4, :])
        ratios.append(lids / (2 * _dist(p[..., 0, :], p[..., 3, :])))
    return np.mean(ratios, axis=0)


def eyes_closed(landmarks) -> np.ndarray:
    """Minus the eye aspect ratio (higher: more closed)."""
    return -eyes_open(landmarks)


def brow_raise(landmarks) -> np.ndarray:
    """Mean distance from each brow's centre to its eye's centre over inter-ocular distance."""
    lm = _points(landmarks)
    gaps = [_dist(lm[..., brow, :].mean(-2), lm[..., eye, :].mean(-2))
            for brow, eye in ((RIGHT_BROW, RIGHT_EYE), (LEFT_BROW, LEFT_EYE))]
    return np.mean(gaps, axis=0) / inter_ocular(lm)


SCORES = {"smile": smile, "jaw_open": jaw_open, "eyes_open": eyes_open, "eyes_closed": eyes_closed,
          "brow_raise": brow_raise}


def check(attribute: str) -> None:
    """A clear error for a name without a landmark score."""
    if attribute not in SCORES:
        raise EditkitError(f"no landmark score for attribute '{attribute}' (known: {', '.join(SCORES)})")


def score(attribute: str, landmarks) -> np.ndarray:
    """The named attribute score for (68, 2) or (N, 68, 2) landmarks."""
    check(attribute)
    return SCORES[attribute](landmarks)


def detect_landmarks(image: np.ndarray) -> np.ndarray | None:
    """68 landmarks (68, 2) in pixels (x right, y down; `editkit.faces.landmarks68`) of the largest face dlib's HOG
    detector finds in an RGB uint8 image (small images are searched upsampled, `editkit.faces.detect_hog`), or None.
    """
    from editkit.faces.detect import detect_hog
    from editkit.faces.landmarks import landmarks68

    image = np.ascontiguousarray(image, dtype=np.uint8)
    try:
        faces = detect_hog(image)
    except ImportError:
        raise EditkitError("landmark scores need dlib: pip install dlib-bin (or `pip install editkit[faces]`)") \
            from None
    if not faces:
        return None
    return landmarks68(image, max(faces, key=lambda face: face.area).box).astype(np.float64)
