"""Alignment: a similarity transform (scale, roll, shift) from the photo to a square crop framed as EG3D frames it.

The recipe (docs/faces.md): start from FFHQ's crop square (from eyes and mouth corners, as in FFHQ's and EG3D's
dataset scripts), then alternate two steps a few times: estimate the camera of the current crop from its
landmarks (editkit.faces.camera), and re-fit the transform so that the landmarks land where the head model's
landmarks project at that camera. At the fixed point the crop shows the face exactly where a generator rendering
from the estimated camera would put it, upright, at the model's scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from editkit import cameras
from editkit.faces.camera import STABLE, estimate_camera, head_landmarks3d

REFINE_STEPS = 4


def ffhq_matrix(landmarks68: np.ndarray, resolution: int) -> np.ndarray:
    """(2, 3) similarity from photo pixels to FFHQ's oriented crop square mapped onto `resolution` px.

    FFHQ's rule: the square is centred a tenth of the way from the eye midpoint to the mouth midpoint, its side is
    2 max(2 |eye-to-eye|, 1.8 |eye-to-mouth|), its x axis is the eye-to-eye vector tilted by the perpendicular of
    the eye-to-mouth vector.
    """
    lm = np.asarray(landmarks68, np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) / 2 - eye_avg
    x_axis = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x_axis /= np.hypot(*x_axis)
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    centre = eye_avg + eye_to_mouth * 0.1
    scale = resolution / (2 * half)
    linear = scale * np.array([x_axis, [-x_axis[1], x_axis[0]]])  # rows: the crop's x and y axes (y points down)
    return np.concatenate([linear, (resolution / 2 - linear @ centre)[:, None]], 1)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity (no reflection) mapping points src (N, 2) onto dst (N, 2)."""
    s, d = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    zs = (s[:, 0] - s[:, 0].mean()) + 1j * (s[:, 1] - s[:, 1].mean())
    zd = (d[:, 0] - d[:, 0].mean()) + 1j * (d[:, 1] - d[:, 1].mean())
    a = (np.conj(zs) @ zd) / (np.conj(zs) @ zs)  # scale and rotation as one complex number
    linear = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.concatenate([linear, (d.mean(0) - linear @ s.mean(0))[:, None]], 1)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2, 3) affine map `outer` after `inner`."""
    return np.concatenate([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], 1)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) through a (2, 3) affine map."""
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def scale_of(matrix: np.ndarray) -> float:
    """The scale factor of a (2, 3) similarity (crop pixels per photo pixel)."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def warp(image: np.ndarray, matrix: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop (resolution, resolution, 3) uint8 of `image` under `matrix` (pixel centres at +0.5), and a float32
    mask of the crop pixels that lie inside the photo (1) or in its mirrored padding (0).

    A crop smaller than the face is taken from an area-filtered shrink of the photo, so nothing aliases. The mirrored
    padding is blurred, as in FFHQ's script, so it does not read as a second face.
    """
    import cv2

    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    scale = scale_of(matrix)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        matrix = compose(matrix, np.array([[w / size[0], 0, 0], [0, h / size[1], 0]]))
    # OpenCV puts pixel centres at integer coordinates: shift in and out by half a pixel
    cv_matrix = compose(compose(np.array([[1, 0, -0.5], [0, 1, -0.5]]), matrix), np.array([[1, 0, 0.5], [0, 1, 0.5]]))
    crop = cv2.warpAffine(image, cv_matrix, (resolution, resolution), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT_101)
    inside = cv2.warpAffine(np.ones(image.shape[:2], np.float32), cv_matrix, (resolution, resolution),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if inside.min() < 1:
        blurred = cv2.GaussianBlur(crop, (0, 0), resolution / 32)
        crop = np.round(inside[..., None] * crop + (1 - inside[..., None]) * blurred).astype(np.uint8)
    return crop, inside


@dataclass
class Alignment:
    """An aligned face: the crop, its camera and how it was cut from the photo."""

    image: np.ndarray      # (R, R, 3) uint8 RGB crop
    valid: np.ndarray      # (R, R) float32: 1 where the crop shows the photo, 0 on mirrored padding
    landmarks: np.ndarray  # (68, 2) landmarks in crop pixels
    label: torch.Tensor    # (25,) EG3D camera label of the crop
    matrix: np.ndarray     # (2, 3) photo pixels -> crop pixels
    face: object = None    # the detection it came from (editkit.faces.detect.Face), when known
    photo_landmarks: np.ndarray | None = None  # (68, 2) landmarks in photo pixels, when known

    @property
    def yaw_pitch(self) -> tuple[float, float]:
        """Yaw and pitch of the camera in degrees."""
        yaw, pitch = cameras.label_to_yaw_pitch(self.label)
        return float(yaw[0]), float(pitch[0])


def refine_matrix(landmarks68: np.ndarray, resolution: int, steps: int = REFINE_STEPS) -> np.ndarray:
    """The photo-to-crop similarity: FFHQ's square, then `steps` rounds of camera estimate and template fit."""
    matrix = ffhq_matrix(landmarks68, resolution)
    template = torch.from_numpy(head_landmarks3d()[None, STABLE])
    for _ in range(steps):
        points = apply(matrix, landmarks68)
        label = estimate_camera(points, resolution)
        target = cameras.project(template, label[None], resolution)[0].double().numpy()
        matrix = compose(fit_similarity(points[STABLE], target), matrix)
    return matrix


def align_face(image: np.ndarray, landmarks68: np.ndarray, resolution: int,
               steps: int = REFINE_STEPS) -> Alignment:
    """Cut the EG3D-framed crop of the face with these photo landmarks (68, 2) and estimate its camera."""
    matrix = refine_matrix(landmarks68, resolution, steps)
    crop, valid = warp(image, matrix, resolution)
    points = apply(matrix, landmarks68)
    return Alignment(crop, valid, points.astype(np.float32), estimate_camera(points, resolution), matrix)
