"""Pose accuracy: the camera estimated from a rendered face against the camera the generator was given.

The error is the geodesic angle in degrees between the two camera rotations (``editkit.cameras.rotation_angle_deg``).
The estimator is any callable ``(landmarks68, image_size) -> (25,) EG3D label``; reports name it, since its own
error on ground truth (the noise floor, ``editkit.evaluation.noise_floor``) bounds what the metric can resolve.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from editkit import cameras

Estimator = Callable[[np.ndarray, int], np.ndarray]


def pose_error(estimated, given) -> float:
    """Angle in degrees between the rotations of two (25,) camera labels."""
    return float(cameras.rotation_angle_deg(np.asarray(estimated, np.float64).reshape(1, 25),
                                            np.asarray(given, np.float64).reshape(1, 25))[0])


def pose_errors(landmarks: list, labels, image_size: int, estimator: Estimator) -> list:
    """Pose error per view: ``landmarks`` holds (68, 2) or None (no face) per view, ``labels`` (V, 25) the cameras
    given; None where there was no face."""
    labels = np.asarray(labels, np.float64).reshape(-1, 25)
    return [None if lm is None else pose_error(estimator(lm, image_size), label)
            for lm, label in zip(landmarks, labels)]
