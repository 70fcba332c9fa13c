"""The camera of an aligned face crop: `cv2.solvePnP` of its 68 landmarks against the CC0 head model's 3D landmarks,
refined jointly with the head's shape.

The intrinsics are EG3D's fixed ones (normalised focal 4.2647, principal point at the centre), so only the pose
is solved. The mean head's landmarks are only a start: faces differ in shape, and a pose fitted to the mean shape
absorbs the difference (about 6 degrees median error on demo-world renders). So the pose is refined together with
the 40 identity shape coefficients of the head model's landmarks (a morphable landmark model, CC0) under their
standard normal prior (median error 3.4 degrees; docs/faces.md). The answer is snapped to EG3D's camera family (radius 2.7, looking at (0, 0, 0.2), no roll): the yaw
and pitch come from the viewing direction of the PnP pose, i.e. from how the landmarks are foreshortened, not from
where the face sits in the crop; framing and roll are the aligner's job (editkit/faces/align.py, docs/faces.md).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from editkit import cameras
from editkit.errors import EditkitError

HEAD_LANDMARKS = Path(__file__).resolve().parent.parent / "data" / "head_landmarks68.json"
# Brows, nose, eyes and mouth: fixed points of the face. The jaw contour (0-16) is a silhouette whose place on
# the head changes with the view, so it is left out of the fit.
STABLE = np.arange(17, 68)
# dlib's landmark scatter on aligned crops, as a share of the crop side: weighs the landmarks against the shape prior
# (tuned on demo-world renders, docs/faces.md)
LANDMARK_NOISE = 1.5 / 128


@lru_cache(maxsize=1)
def _template() -> dict:
    return json.loads(HEAD_LANDMARKS.read_text())


def head_landmarks3d() -> np.ndarray:
    """(68, 3) world coordinates of the mean head's neutral landmarks, jaw contour as seen from the front."""
    return np.asarray(_template()["landmarks"], np.float64)


def identity_basis() -> np.ndarray:
    """(K, 68, 3): how one unit of each of the head model's K identity coefficients moves the landmarks."""
    return np.asarray(_template()["identity_basis"], np.float64).reshape(-1, 68, 3)


def intrinsic_matrix(image_size: int, focal: float = cameras.FOCAL) -> np.ndarray:
    """(3, 3) pixel intrinsics of EG3D's camera for a square image (pixel centres at +0.5, as cameras.project)."""
    return np.array([[focal * image_size, 0, image_size / 2], [0, focal * image_size, image_size / 2], [0, 0, 1]])


def yaw_pitch_from_forward(forward: np.ndarray, radius: float = cameras.RADIUS, pivot=cameras.PIVOT):
    """Yaw and pitch (degrees) of the EG3D camera on the sphere of `radius` whose view axis, aimed at `pivot`,
    points along `forward` (world coordinates)."""
    f = np.asarray(forward, np.float64) / np.linalg.norm(forward)
    p = np.asarray(pivot, np.float64)
    # origin = pivot - s * f with |origin| = radius: the positive root of s^2 - 2 s (p.f) + |p|^2 - radius^2 = 0
    pf = p @ f
    s = pf + math.sqrt(pf * pf - p @ p + radius * radius)
    origin = p - s * f
    return math.degrees(math.atan2(origin[0], origin[2])), math.degrees(math.asin(origin[1] / radius))


def solve_pose(landmarks68: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera rotation (3, 3) and translation (3,) that best project the head model's stable landmarks
    onto `landmarks68` with EG3D's intrinsics (Levenberg-Marquardt from the frontal camera)."""
    import cv2

    points = np.asarray(landmarks68, np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise EditkitError(f"expected 68 finite 2D landmarks, got an array of shape {points.shape}")
    frontal = cameras.frontal_label()[0].double().numpy()[:16].reshape(4, 4)
    rvec, _ = cv2.Rodrigues(np.ascontiguousarray(frontal[:3, :3].T))
    tvec = -frontal[:3, :3].T @ frontal[:3, 3]
    _, rvec, tvec = cv2.solvePnP(head_landmarks3d()[STABLE], points[STABLE], intrinsic_matrix(image_size), None,
                                 rvec, tvec.reshape(3, 1).copy(), useExtrinsicGuess=True,
                                 flags=cv2.SOLVEPNP_ITERATIVE)
    rotation, _ = cv2.Rodrigues(rvec)
    return rotation, tvec.reshape(3)


def fit_pose_and_shape(landmarks68: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotation, translation, identity coefficients) that best explain the stable landmarks: least squares of the
    reprojection errors (in units of LANDMARK_NOISE) and of the coefficients (their N(0, 1) prior), from the PnP
    pose of the mean head."""
    import cv2
    from scipy.optimize import least_squares

    rotation, translation = solve_pose(landmarks68, image_size)
    points = np.asarray(landmarks68, np.float64)[STABLE]
    mean, basis = head_landmarks3d()[STABLE], identity_basis()[:, STABLE]
    intrinsics, scale = intrinsic_matrix(image_size), LANDMARK_NOISE * image_size

    def residuals(x):
        head = mean + np.tensordot(x[6:], basis, 1)
        projected, _ = cv2.projectPoints(head, x[:3], x[3:6], intrinsics, None)
        return np.concatenate([((projected.reshape(-1, 2) - points) / scale).reshape(-1), x[6:]])

    start = np.concatenate([cv2.Rodrigues(rotation)[0].reshape(3), translation, np.zeros(len(basis))])
    x = least_squares(residuals, start, x_scale="jac").x
    return cv2.Rodrigues(x[:3])[0], x[3:6], x[6:]


def estimate_camera(landmarks68, image_size: int) -> torch.Tensor:
    """EG3D label (25,) float32 of an aligned square crop of side `image_size` px with these 68 dlib-ordered
    landmarks (pixel coordinates, x right, y down, pixel centres at +0.5)."""
    rotation, _, _ = fit_pose_and_shape(landmarks68, image_size)
    yaw, pitch = yaw_pitch_from_forward(rotation[2])  # the camera's z axis in world coordinates
    return cameras.make_label(yaw, pitch)[0]
