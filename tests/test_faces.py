"""The face front end on demo-world renders, whose cameras and landmarks are known exactly."""

import cv2
import numpy as np
import pytest
import torch

from editkit import cameras
from editkit.errors import EditkitError, FaceError, FaceTooSmallError, NoFaceError
from editkit.faces import align_face, detect_faces, estimate_camera, prepare_face
from editkit.faces.align import apply, compose, ffhq_matrix, fit_similarity, scale_of
from editkit.faces.camera import head_landmarks3d, solve_pose, yaw_pitch_from_forward
from training.synthetic.head_model import HeadParams, sample_params
from training.synthetic.render import HeadRenderer

RESOLUTION = 256


@pytest.fixture(scope="module")
def renderer():
    r = HeadRenderer(RESOLUTION)
    yield r
    r.release()


def render(renderer, params, yaw, pitch):
    """(uint8 image, true 2D landmarks, label (25,)) of one head."""
    label = cameras.make_label(yaw, pitch)[0]
    out = renderer.render(params, label.numpy())
    return np.round(out["image"] * 255).astype(np.uint8), out["landmarks2d"], label


def angle(a, b) -> float:
    return float(cameras.rotation_angle_deg(a[None], b[None]))


def test_mean_head_camera_is_exact(renderer):
    """The head model's own mean face: PnP and alignment return the rendering camera and an identity crop."""
    for yaw, pitch in [(-30, 4), (0, 0), (22, -8)]:
        image, landmarks, label = render(renderer, HeadParams.neutral(), yaw, pitch)
        assert angle(estimate_camera(landmarks, RESOLUTION), label) < 0.1
        aligned = align_face(image, landmarks, RESOLUTION)
        assert angle(aligned.label, label) < 0.1
        assert abs(scale_of(aligned.matrix) - 1) < 0.005 and np.abs(aligned.matrix[:, 2]).max() < 0.5
        assert aligned.valid.min() == 1


def test_the_shape_fit_recovers_cameras_of_other_heads_that_the_mean_head_misses(renderer):
    """Heads of other shapes (true landmarks, neutral expression): fitting the shape with the pose recovers the
    camera far better than PnP against the mean head."""
    params = sample_params(np.random.default_rng(3), 20, expression=False)
    pitches = np.random.default_rng(3).uniform(-10, 10, 20)
    mean_errors, fitted_errors = [], []
    for p, yaw, pitch in zip(params, np.linspace(-35, 35, 20), pitches):
        _, landmarks, label = render(renderer, p, yaw, pitch)
        rotation, _ = solve_pose(landmarks, RESOLUTION)
        mean_errors.append(angle(cameras.make_label(*yaw_pitch_from_forward(rotation[2]))[0], label))
        fitted_errors.append(angle(estimate_camera(landmarks, RESOLUTION), label))
    assert np.median(fitted_errors) < 0.6 * np.median(mean_errors), (fitted_errors, mean_errors)


def test_frontal_mean_head_fills_the_ffhq_square(renderer):
    """The demo world is placed so that FFHQ's crop rule of the frontal mean head is the whole frame."""
    _, landmarks, _ = render(renderer, HeadParams.neutral(), 0, 0)
    matrix = ffhq_matrix(landmarks, RESOLUTION)
    assert abs(scale_of(matrix) - 1) < 0.02 and np.abs(matrix[:, 2]).max() < 0.02 * RESOLUTION


def test_similarity_fit_and_composition():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (20, 2))
    theta, scale, shift = 0.3, 1.7, np.array([5.0, -8.0])
    truth = np.concatenate([scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]),
                            shift[:, None]], 1)
    fitted = fit_similarity(points, apply(truth, points))
    assert np.allclose(fitted, truth)
    assert np.allclose(apply(compose(fitted, truth), points), apply(fitted, apply(truth, points)))


def test_alignment_undoes_a_known_similarity(renderer):
    """A render moved into a bigger 'photo' (rotated, scaled, shifted) comes back as the render and its camera."""
    image, landmarks, label = render(renderer, HeadParams.neutral(), 18, 6)
    theta, scale = np.deg2rad(12), 1.6
    to_photo = np.concatenate([scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]),
                               [[60.0], [35.0]]], 1)
    # OpenCV puts pixel centres at integers, our landmarks at +0.5: shift in and out by half a pixel
    cv_matrix = compose(compose(np.array([[1, 0, -0.5], [0, 1, -0.5]]), to_photo), np.array([[1, 0, 0.5], [0, 1, 0.5]]))
    photo = cv2.warpAffine(image, cv_matrix, (560, 560), flags=cv2.INTER_CUBIC, borderValue=(255, 255, 255))
    aligned = align_face(photo, apply(to_photo, landmarks), RESOLUTION)
    round_trip = compose(aligned.matrix, to_photo)
    assert np.allclose(round_trip[:, :2], np.eye(2), atol=2e-3) and np.abs(round_trip[:, 2]).max() < 0.3
    assert angle(aligned.label, label) < 0.1
    error = np.abs(aligned.image.astype(float) - image)[16:-16, 16:-16]  # inner part: no border effects
    assert error.mean() < 2.0


def test_detectors_find_the_face_and_agree(renderer):
    """MTCNN and HOG (upsampled on a small image) both find a 128 px render's face; MTCNN's dlib box sits where
    HOG's does."""
    image, _, _ = render(renderer, HeadParams.neutral(), 10, 0)
    image = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
    mtcnn, hog = detect_faces(image, "mtcnn"), detect_faces(image, "hog")
    assert len(mtcnn) == 1 and len(hog) == 1 and mtcnn[0].keypoints.shape == (5, 2)
    a, b = mtcnn[0].landmark_box(), hog[0].landmark_box()
    size = b[2] - b[0]
    assert np.abs((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2).max() < 0.15 * size
    assert abs((a[2] - a[0]) / size - 1) < 0.2
    assert detect_faces(image)[0].detector == "mtcnn"


def test_pnp_recovers_known_cameras(renderer):
    """Random heads (identity, expression, light) at known cameras, through the whole front end (MTCNN, dlib,
    alignment, PnP). The mean-head template cannot know each head's shape: a few degrees of error remain
    (docs/faces.md has the table)."""
    params = sample_params(np.random.default_rng(3), 8)
    yaws, pitches = np.linspace(-30, 30, 8), np.array([0, 5, -5, 3, -3, 6, 0, -4])
    errors, yaw_errors = [], []
    for p, yaw, pitch in zip(params, yaws, pitches):
        image, _, label = render(renderer, p, yaw, pitch)
        face = prepare_face(image, RESOLUTION)
        errors.append(angle(face.label, label))
        yaw_errors.append(face.yaw_pitch[0] - yaw)
        assert face.image.shape == (RESOLUTION, RESOLUTION, 3) and face.landmarks.shape == (68, 2)
    assert np.median(errors) < 7 and np.percentile(errors, 75) < 10, errors
    assert np.corrcoef(yaws, np.array(yaws) + yaw_errors)[0, 1] > 0.95


def test_no_face_small_face_and_bad_index(renderer):
    with pytest.raises(NoFaceError, match="blank.png: no face found"):
        prepare_face(np.full((200, 200, 3), 128, np.uint8), 128, source="blank.png")
    image, _, _ = render(renderer, HeadParams.neutral(), 0, 0)
    with pytest.raises(FaceError, match="face index 1 asked for, but 1 face"):
        prepare_face(image, 128, face_index=1)
    canvas = np.full((200, 200, 3), 255, np.uint8)
    canvas[50:106, 60:116] = cv2.resize(image, (56, 56), interpolation=cv2.INTER_AREA)
    with pytest.raises(FaceTooSmallError, match="too small"):
        prepare_face(canvas, 128)


def test_estimate_camera_signature():
    """estimate_camera(landmarks68, image_size) -> (25,) float32 tensor; bad shapes are a clear error."""
    landmarks = cameras.project(torch.from_numpy(head_landmarks3d())[None], cameras.frontal_label(), 128)[0]
    label = estimate_camera(landmarks.numpy(), 128)
    assert isinstance(label, torch.Tensor) and label.shape == (25,) and label.dtype == torch.float32
    assert angle(label, cameras.frontal_label()[0]) < 0.01
    with pytest.raises(EditkitError, match="68 finite 2D landmarks"):
        estimate_camera(np.zeros((5, 2)), 128)
