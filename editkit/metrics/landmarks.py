"""Landmark consistency: 3D consistency measured with a 2D landmark detector and the known cameras.

The 68 landmarks found in each view of one latent are triangulated with the cameras the generator was given (linear
DLT, least squares over all views), reprojected into every view, and the reprojection error is divided by that
view's inter-ocular distance (outer eye corners, as 300-W's normalised mean error). A 3D-consistent generator with a
perfect detector scores 0. Two means are reported: over all 68 points and over the 51 inner ones: the jaw contour
(0-16) is a silhouette that slides over the face as the view turns, so even a rigid head does not reproject it.
"""

from __future__ import annotations

import numpy as np

from editkit import cameras

INNER = slice(17, 68)
OUTER_EYE_CORNERS = (36, 45)


def projection_matrices(labels, resolution: int) -> np.ndarray:
    """(V, 3, 4) pixel projection matrices of EG3D labels (V, 25), in ``editkit.cameras.project``'s pixel frame."""
    rot, origin, _ = cameras.label_to_pose(labels)
    rot, origin = rot.numpy(), origin.numpy()
    k = np.asarray(labels, np.float64).reshape(-1, 25)[:, 16:].reshape(-1, 3, 3) * np.array([[resolution],
                                                                                           [resolution], [1.0]])
    world2cam = np.concatenate([rot.transpose(0, 2, 1), -rot.transpose(0, 2, 1) @ origin[..., None]], axis=2)
    return k @ world2cam


def triangulate(points2d: np.ndarray, labels, resolution: int) -> np.ndarray:
    """World points (P, 3) seen at pixels ``points2d`` (V, P, 2) by cameras ``labels`` (V, 25), V >= 2 (DLT)."""
    points2d = np.asarray(points2d, np.float64)
    if points2d.ndim != 3 or len(points2d) < 2:
        raise ValueError(f"triangulation needs (V >= 2, P, 2) points, got {points2d.shape}")
    proj = projection_matrices(labels, resolution)  # (V, 3, 4)
    # each view adds u * P3 - P1 = 0 and v * P3 - P2 = 0 for the homogeneous point
    rows = np.concatenate([points2d[..., :1] * proj[:, None, 2] - proj[:, None, 0],
                           points2d[..., 1:] * proj[:, None, 2] - proj[:, None, 1]], axis=0)  # (2V, P, 4)
    rows = rows.transpose(1, 0, 2)  # (P, 2V, 4)
    rows = rows / np.linalg.norm(rows, axis=2, keepdims=True)
    homogeneous = np.linalg.svd(rows)[2][:, -1]  # (P, 4): right singular vector of the smallest singular value
    return homogeneous[:, :3] / homogeneous[:, 3:]


def reproject(points3d: np.ndarray, labels, resolution: int) -> np.ndarray:
    """(V, P, 2) pixels of world points (P, 3) in each camera of ``labels`` (V, 25)."""
    labels = np.asarray(labels, np.float64).reshape(-1, 25)
    points = np.repeat(np.asarray(points3d, np.float64)[None], len(labels), axis=0)
    return cameras.project(points, labels, resolution).double().numpy()


def normalised_errors(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(V, P) point distances divided by each view's inter-ocular distance in ``reference`` (V, P>=46, 2)."""
    predicted, reference = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    iod = np.linalg.norm(reference[:, OUTER_EYE_CORNERS[1]] - reference[:, OUTER_EYE_CORNERS[0]], axis=-1)
    return np.linalg.norm(predicted - reference, axis=-1) / np.maximum(iod, 1e-6)[:, None]


def consistency(landmarks: list, labels, resolution: int) -> dict:
    """Landmark consistency of one latent's views. ``landmarks``: (68, 2) or None (no face) per view.

    Returns ``per_view_all``/``per_view_inner`` (mean normalised reprojection error per view, None where no face or
    fewer than two views have faces), their means ``all`` and ``inner``, and ``views_used``."""
    found = [i for i, lm in enumerate(landmarks) if lm is not None]
    empty = [None] * len(landmarks)
    if len(found) < 2:
        return {"all": None, "inner": None, "per_view_all": empty, "per_view_inner": list(empty), "views_used": 0}
    seen = np.stack([landmarks[i] for i in found])
    used = np.asarray(labels, np.float64).reshape(-1, 25)[found]
    errors = normalised_errors(reproject(triangulate(seen, used, resolution), used, resolution), seen)
    per_view_all, per_view_inner = list(empty), list(empty)
    for row, i in enumerate(found):
        per_view_all[i], per_view_inner[i] = float(errors[row].mean()), float(errors[row, INNER].mean())
    return {"all": float(errors.mean()), "inner": float(errors[:, INNER].mean()), "per_view_all": per_view_all,
            "per_view_inner": per_view_inner, "views_used": len(found)}
