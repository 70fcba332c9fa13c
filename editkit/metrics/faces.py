"""The face front end the metrics use (editkit.faces): 68 landmarks per image and a camera from them.

This is the one place where the metrics meet a face detector and a pose estimator. Conventions: images are uint8
(H, W, 3) RGB; landmarks are (68, 2) float32 in dlib's order, pixel coordinates with pixel centres at +0.5 (as
``editkit.cameras.project``); a camera is a 25-float EG3D label.
"""

from __future__ import annotations

import numpy as np

from editkit.faces import detect_faces, estimate_camera, landmarks68

__all__ = ["LandmarkDetector", "estimate_camera"]


class LandmarkDetector:
    """Face detection (``editkit.faces.detect_faces``) + dlib's 68-point predictor; the largest face wins.

    ``detector`` is 'hog' (dlib's HOG detector, small images upsampled once: fast, the default), 'mtcnn' or 'auto'.
    """

    def __init__(self, detector: str = "hog"):
        self.detector = detector
        self.name = (f"editkit.faces ({detector} detector) + dlib shape_predictor_68_face_landmarks "
                     "(iBUG 300-W: non-commercial terms)")

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """(68, 2) landmarks of the largest face, or None when no face is found."""
        found = detect_faces(image, self.detector)
        return landmarks68(image, found[0].landmark_box()) if found else None
