import math

import numpy as np
import pytest
import torch

from editkit import cameras


def test_frontal_camera_is_opencv_looking_down_minus_z():
    label = cameras.frontal_label()
    assert label.shape == (1, 25) and label.dtype == torch.float32
    rot, origin, focal = cameras.label_to_pose(label)
    assert torch.allclose(origin[0], torch.tensor([0.0, 0.0, 2.7], dtype=torch.float64))
    # x right, y down (world -y), z forward towards the pivot at (0, 0, 0.2): world -z
    assert torch.allclose(rot[0], torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=torch.float64), atol=1e-12)
    assert focal.item() == pytest.approx(cameras.FOCAL)
    assert label[0, 16:].tolist() == pytest.approx([cameras.FOCAL, 0, 0.5, 0, cameras.FOCAL, 0.5, 0, 0, 1])


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (30, 0), (-35, 10), (12.5, -20), (80, 45)])
def test_yaw_pitch_round_trip(yaw, pitch):
    y, p = cameras.label_to_yaw_pitch(cameras.make_label(yaw, pitch))
    assert y.item() == pytest.approx(yaw, abs=1e-4) and p.item() == pytest.approx(pitch, abs=1e-4)


def test_positive_yaw_moves_camera_to_plus_x_and_pitch_up():
    _, origin, _ = cameras.label_to_pose(cameras.make_label([30, 0], [0, 20]))
    assert origin[0, 0] > 0 and origin[1, 1] > 0
    assert torch.allclose(origin.norm(dim=-1), torch.full((2,), cameras.RADIUS, dtype=torch.float64))


def test_matches_eg3d_lookat_sampler_parametrisation():
    """EG3D's LookAtPoseSampler(h, v) places the camera at polar angle arccos(1 - 2v/pi), azimuth h."""
    h, v = math.pi / 2 + 0.3, math.pi / 2 - 0.2
    phi = math.acos(1 - 2 * v / math.pi)
    origin = 2.7 * torch.tensor([math.sin(phi) * math.cos(math.pi - h), math.cos(phi), math.sin(phi) * math.sin(math.pi - h)])
    ours = cameras.make_label(math.degrees(h - math.pi / 2), math.degrees(math.pi / 2 - phi))
    assert torch.allclose(cameras.label_to_pose(ours)[1][0].float(), origin, atol=1e-5)


def test_pivot_projects_to_image_centre_and_rotation_is_orthonormal():
    labels = cameras.orbit(8, yaw_range=35, pitch_range=15)
    uv = cameras.project(torch.tensor(cameras.PIVOT).expand(8, 1, 3), labels, resolution=128)
    assert torch.allclose(uv, torch.full_like(uv, 64.0), atol=1e-3)
    rot, _, _ = cameras.label_to_pose(labels)
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(8, 3, 3), atol=1e-6)


def test_rotation_angle_between_labels():
    a, b = cameras.make_label(0, 0), cameras.make_label(25, 0)
    assert cameras.rotation_angle_deg(a, a).item() == pytest.approx(0, abs=1e-3)
    # the camera turns by the yaw change minus the small look-at correction towards the off-centre pivot
    assert cameras.rotation_angle_deg(a, b).item() == pytest.approx(25, abs=2.5)


def test_fov_to_focal_matches_official_constant():
    assert cameras.fov_to_focal(18.837) == pytest.approx(4.2634, abs=1e-3)


def test_json_round_trip():
    label = cameras.make_label(10, -5)
    assert np.allclose(np.array(cameras.to_json(label), dtype=np.float32), label.numpy()[0])
