"""EG3D cameras: the 25-float label, look-at poses from yaw/pitch in degrees, orbits.

Conventions (identical to NVlabs/eg3d, so labels interchange with official datasets and scripts):

* World: y is up, the face looks towards +z, the head sits near the origin.
* Camera: OpenCV convention, x right, y down, z forward (the viewing direction); ``cam2world`` maps camera
  coordinates to world coordinates.
* Label: ``cam2world.flatten()`` (16 floats) followed by the intrinsics normalised by the image size
  (``[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]``, 9 floats).
* Pose: the camera sits on a sphere of radius ``RADIUS`` around the world origin and looks at ``PIVOT``.
  ``yaw > 0`` moves the camera towards +x (the subject's left; the face turns to the image's left),
  ``pitch > 0`` moves the camera up (+y, looking down on the face). Angles are true azimuth/elevation in degrees.
  EG3D's ``LookAtPoseSampler(h, v)`` corresponds to ``yaw = h - pi/2`` and elevation
  ``pi/2 - arccos(1 - 2 v / pi)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

RADIUS = 2.7
PIVOT = (0.0, 0.0, 0.2)
FOCAL = 4.2647  # normalised focal length of the FFHQ models (official video/viz scripts)


def fov_to_focal(fov_degrees: float) -> float:
    """Normalised focal length for a field of view, as EG3D's ``FOV_to_intrinsics`` computes it."""
    return float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))


def intrinsics(focal: float = FOCAL) -> torch.Tensor:
    """(3, 3) intrinsics normalised by image size, principal point at the centre."""
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])


def _as_batch(x, n: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    return t.expand(n) if n is not None and t.numel() == 1 else t


def look_at(origin: torch.Tensor, target=PIVOT) -> torch.Tensor:
    """(N, 4, 4) OpenCV cam2world for cameras at ``origin`` (N, 3) looking at ``target``, no roll, world y up."""
    origin = torch.as_tensor(origin, dtype=torch.float64).reshape(-1, 3)
    forward = torch.as_tensor(target, dtype=torch.float64).reshape(-1, 3) - origin
    forward = forward / forward.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = -torch.linalg.cross(up, forward)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right)
    down = down / down.norm(dim=-1, keepdim=True)
    cam2world = torch.eye(4, dtype=torch.float64).repeat(origin.shape[0], 1, 1)
    cam2world[:, :3, :3] = torch.stack([right, down, forward], dim=-1)
    cam2world[:, :3, 3] = origin
    return cam2world


def camera_origin(yaw, pitch=0.0, radius: float = RADIUS) -> torch.Tensor:
    """(N, 3) camera positions on the sphere for yaw/pitch in degrees (broadcast to a batch)."""
    yaw, pitch = torch.broadcast_tensors(_as_batch(yaw), _as_batch(pitch))
    yaw, pitch = torch.deg2rad(yaw), torch.deg2rad(pitch)
    return radius * torch.stack(
        [torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch), torch.cos(pitch) * torch.cos(yaw)], dim=-1)


def pose_to_label(cam2world: torch.Tensor, focal: float = FOCAL) -> torch.Tensor:
    """(N, 25) float32 labels from (N, 4, 4) cam2world matrices."""
    cam2world = torch.as_tensor(cam2world).reshape(-1, 4, 4)
    k = intrinsics(focal).to(torch.float64).reshape(1, 9).expand(cam2world.shape[0], 9)
    return torch.cat([cam2world.to(torch.float64).reshape(-1, 16), k], dim=1).float()


def make_label(yaw=0.0, pitch=0.0, radius: float = RADIUS, pivot=PIVOT, focal: float = FOCAL) -> torch.Tensor:
    """(N, 25) EG3D labels for yaw/pitch in degrees (scalars or sequences of equal length)."""
    return pose_to_label(look_at(camera_origin(yaw, pitch, radius), pivot), focal)


def frontal_label(focal: float = FOCAL) -> torch.Tensor:
    """(1, 25) label of the frontal camera, the usual conditioning camera of EG3D's mapping network."""
    return make_label(0.0, 0.0, focal=focal)


def label_to_pose(label) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split (N, 25) labels into rotation (N, 3, 3), camera position (N, 3) and focal (N,)."""
    label = torch.as_tensor(label, dtype=torch.float64).reshape(-1, 25)
    cam2world = label[:, :16].reshape(-1, 4, 4)
    return cam2world[:, :3, :3], cam2world[:, :3, 3], label[:, 16]


def label_to_yaw_pitch(label) -> tuple[torch.Tensor, torch.Tensor]:
    """Yaw and pitch in degrees of the camera position in each (N, 25) label (inverse of ``make_label``)."""
    _, origin, _ = label_to_pose(label)
    yaw = torch.rad2deg(torch.atan2(origin[:, 0], origin[:, 2]))
    pitch = torch.rad2deg(torch.asin((origin[:, 1] / origin.norm(dim=-1)).clamp(-1, 1)))
    return yaw, pitch


def rotation_angle_deg(label_a, label_b) -> torch.Tensor:
    """Geodesic angle in degrees between the camera rotations of two label batches."""
    ra, _, _ = label_to_pose(label_a)
    rb, _, _ = label_to_pose(label_b)
    cos = ((ra.transpose(1, 2) @ rb).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def orbit(n: int, yaw_range: float = 30.0, pitch_range: float = 10.0, **kwargs) -> torch.Tensor:
    """(n, 25) labels along a closed elliptical path: yaw = A sin(t), pitch = B cos(t), as in EG3D's videos."""
    t = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return make_label(yaw_range * torch.sin(t), pitch_range * torch.cos(t), **kwargs)


def yaw_sweep(n: int, yaw_range: float = 30.0, pitch: float = 0.0, **kwargs) -> torch.Tensor:
    """(n, 25) labels from yaw -yaw_range to +yaw_range at a fixed pitch."""
    return make_label(torch.linspace(-yaw_range, yaw_range, n, dtype=torch.float64), pitch, **kwargs)


def project(points: torch.Tensor, label, resolution: int) -> torch.Tensor:
    """Project world points (N, P, 3) with cameras (N, 25) to pixel coordinates (N, P, 2); pixel centres at +0.5."""
    rot, origin, _ = label_to_pose(label)
    k = torch.as_tensor(label, dtype=torch.float64).reshape(-1, 25)[:, 16:].reshape(-1, 3, 3)
    cam = (torch.as_tensor(points, dtype=torch.float64) - origin[:, None]) @ rot  # world -> camera
    uv = (cam / cam[..., 2:3]) @ k.transpose(1, 2)
    return (uv[..., :2] * resolution).float()


def to_json(label) -> list[float]:
    """One label as a plain list of 25 floats for JSON files."""
    return [float(x) for x in np.asarray(torch.as_tensor(label)).reshape(25)]
