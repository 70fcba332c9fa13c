"""editkit.metrics and `editkit eval`: every metric on inputs whose answer is known.

Faces come from the demo world (training.synthetic.HeadRenderer), which gives exact cameras and 2D/3D landmarks.
"""

import json

import numpy as np
import pytest
import torch

from editkit import cameras, cli
from editkit.errors import CheckpointError, EditkitError
from editkit.metrics import identity, image, landmarks, pose
from editkit.metrics.faces import LandmarkDetector, estimate_camera
from training.synthetic.head_model import HeadParams, sample_params
from training.synthetic.render import HeadRenderer

YAWS = np.linspace(-35, 35, 5)


@pytest.fixture(scope="module")
def renderer():
    r = HeadRenderer(128)
    yield r
    r.release()


@pytest.fixture(scope="module")
def detector():
    return LandmarkDetector()


@pytest.fixture(scope="module")
def dlib_resnet():
    return identity.load_embedder("dlib")


def shoot(renderer, params, yaw, pitch=0.0):
    """(uint8 image, label, true 2D landmarks) of one head at one camera."""
    label = cameras.make_label(yaw, pitch)[0].numpy()
    out = renderer.render(params, label)
    return np.round(out["image"] * 255).astype(np.uint8), label, out["landmarks2d"]


# ------------------------------------------------------------------------------------------------------- identity


def test_identical_views_score_perfectly(renderer, detector, dlib_resnet):
    img, _, _ = shoot(renderer, sample_params(np.random.default_rng(3), 1)[0], 10.0)
    lm = detector(img)
    assert lm is not None
    e = dlib_resnet.embed(img, lm)
    result = identity.view_identity([e, e.copy(), e.copy()], reference=1)
    assert result["to_reference"] == pytest.approx([1, 1, 1], abs=1e-9)
    assert result["pairwise"] == pytest.approx(1, abs=1e-9)
    assert "dlib-resnet (not ArcFace)" in dlib_resnet.name
    photo = identity.photo_identity(dlib_resnet, detector, img, img.copy())
    assert photo["cosine"] == pytest.approx(1, abs=1e-9) and photo["no_face"] == []
    blank = identity.photo_identity(dlib_resnet, detector, img, np.full_like(img, 255))
    assert blank["cosine"] is None and blank["no_face"] == ["inversion"]


def test_different_identity_lowers_id(renderer, detector, dlib_resnet):
    heads = sample_params(np.random.default_rng(11), 4, expression=False)
    same, different, frontal = [], [], []
    for i, p in enumerate(heads):
        views = [shoot(renderer, p, yaw) for yaw in (0.0, 17.5)]
        e = [dlib_resnet.embed(img, detector(img)) for img, _, _ in views]
        same.append(identity.cosine(*e))
        frontal.append(e[0])
        other, _, _ = shoot(renderer, heads[(i + 1) % len(heads)], 0.0)
        different.append(identity.cosine(e[0], dlib_resnet.embed(other, detector(other))))
    assert min(same) > max(different), (same, different)
    people = identity.between_people(frontal[:2] + [None] + frontal[2:])  # a view without a face is skipped
    assert len(people) == 6 and max(people) < min(same)
    missing = identity.view_identity([None, np.ones(3), None], reference=0)
    assert missing == {"to_reference": [None, None, None], "pairwise": None}


def test_missing_arcface_file_gives_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "w600k_r50.onnx"
    with pytest.raises(CheckpointError, match=f"not found at {path}.*insightface"):
        identity.load_embedder(str(path))
    monkeypatch.setenv(identity.ENV, f"arcface:{path}")
    with pytest.raises(CheckpointError, match="w600k_r50.onnx"):
        identity.load_embedder()
    with pytest.raises(CheckpointError, match="opencv_zoo"):
        identity.load_embedder(str(tmp_path / "face_recognition_sface_2021dec.onnx"))
    with pytest.raises(EditkitError, match="unknown face-recognition model type"):
        identity.load_embedder(str(tmp_path / "model.bin"))
    code = cli.main(["eval", "--models", "demo-teacher", "--id-model", str(path), "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()


def onnx_embedder_file(path):
    """A small random ONNX network (112x112 image -> 5832-d vector) standing in for ArcFace/SFace weights."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(0, 0.1, (8, 3, 7, 7)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["data", "w"], ["c"], strides=[4, 4]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["embedding"])],
        "embedder", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 5832])],
        initializer=[numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_user_supplied_backbones_load_and_name_themselves(tmp_path, renderer, detector):
    """Each ArcFace-family route runs on a face: .onnx (onnxruntime, cv2 SFace), iresnet and FaceNet state dicts."""
    from facenet_pytorch import InceptionResnetV1

    from editkit.metrics.iresnet import IResNet

    a, _, _ = shoot(renderer, sample_params(np.random.default_rng(5), 1)[0], 0.0)
    b, _, _ = shoot(renderer, sample_params(np.random.default_rng(6), 1)[0], 0.0)
    torch.manual_seed(0)
    torch.save(IResNet((1, 1, 1, 1)).eval().state_dict(), tmp_path / "backbone.pth")
    facenet = InceptionResnetV1(classify=True, num_classes=10).eval().state_dict()  # with a classifier head
    torch.save(facenet, tmp_path / "facenet.pt")
    onnx_embedder_file(tmp_path / "w600k_r50.onnx")
    onnx_embedder_file(tmp_path / "face_recognition_sface_2021dec.onnx")
    specs = {str(tmp_path / "w600k_r50.onnx"): "arcface-onnx", str(tmp_path / "face_recognition_sface_2021dec.onnx"):
             "sface", str(tmp_path / "backbone.pth"): "arcface iresnet", str(tmp_path / "facenet.pt"): "facenet"}
    for spec, label in specs.items():
        embedder = identity.load_embedder(spec)
        assert embedder.name.startswith(label)
        ea, eb = embedder.embed(a, detector(a)), embedder.embed(b, detector(b))
        assert identity.cosine(ea, embedder.embed(a.copy(), detector(a))) == pytest.approx(1, abs=1e-6)
        assert np.abs(ea - eb).max() > 1e-3 * np.abs(ea).max()  # the face's content reaches the embedding
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load it as arcface weights"):
        identity.load_embedder(str(tmp_path / "broken.onnx"))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither an iresnet nor a facenet"):
        identity.load_embedder(str(tmp_path / "other.pth"))


def test_alignment_puts_five_points_on_the_template():
    angle = np.radians(12)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = identity.TEMPLATE_112 @ turn.T * 2.3 + np.array([30.0, 10.0]) + 0.5  # rotated, scaled, shifted
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48], lm[30], lm[48], lm[54] = target
    np.testing.assert_allclose(identity.five_points(lm), target)
    for size in (112, 160):
        matrix = identity.alignment_matrix(lm, size)
        mapped = (target - 0.5) @ matrix[:, :2].T + matrix[:, 2]
        np.testing.assert_allclose(mapped, identity.TEMPLATE_112 * size / 112, atol=1e-9)
    assert identity.align(np.zeros((300, 300, 3), np.uint8), lm, 160).shape == (160, 160, 3)


# ------------------------------------------------------------------------------------------------------ landmarks


def test_landmark_consistency_of_exact_projections_is_zero_and_grows_with_noise():
    points = np.random.default_rng(0).uniform(-0.2, 0.2, (68, 3)) + np.array([0, 0, 0.1])
    labels = cameras.make_label(YAWS, 5.0).numpy()
    exact = landmarks.reproject(points, labels, 128)
    np.testing.assert_allclose(landmarks.triangulate(exact, labels, 128), points, atol=1e-5)
    assert landmarks.consistency(list(exact), labels, 128)["all"] < 1e-5
    rng = np.random.default_rng(1)
    errors = [landmarks.consistency(list(exact + rng.normal(0, s, exact.shape)), labels, 128)["all"]
              for s in (0.5, 1.0, 2.0, 4.0)]
    assert errors == sorted(errors) and errors[0] > 1e-3
    assert errors[3] / errors[1] == pytest.approx(4, rel=0.25)  # proportional to the noise
    partial = landmarks.consistency([exact[0], None, exact[2], None, None], labels, 128)
    assert partial["views_used"] == 2 and partial["per_view_all"][1] is None and partial["all"] < 1e-5
    assert landmarks.consistency([exact[0], None, None, None, None], labels, 128)["all"] is None


def test_true_landmarks_of_a_rendered_head_are_consistent_inside_the_jaw(renderer):
    p = sample_params(np.random.default_rng(2), 1)[0]
    shots = [shoot(renderer, p, yaw) for yaw in YAWS]
    labels = np.stack([label for _, label, _ in shots])
    result = landmarks.consistency([truth for _, _, truth in shots], labels, 128)
    assert result["inner"] < 1e-4          # rigid points: exact
    assert result["all"] > 10 * result["inner"]  # the jaw contour slides with the view


# ----------------------------------------------------------------------------------------------------------- pose


def test_perturbed_camera_raises_pose_error_by_the_perturbation(renderer, detector):
    img, label, truth = shoot(renderer, HeadParams.neutral(), 20.0, 5.0)
    found = detector(img)
    perturbed = cameras.make_label(30.0, 5.0)[0].numpy()
    perturbation = pose.pose_error(perturbed, label)
    assert 9 < perturbation < 11
    for lm, floor in ((truth, 0.05), (found, 4.0)):  # the mean head's own landmarks, then detected ones
        estimated = estimate_camera(lm, 128)
        error = pose.pose_error(estimated, label)
        assert error < floor
        assert abs(pose.pose_error(estimated, perturbed) - perturbation) <= error + 0.05  # float32 labels
    errors = pose.pose_errors([found, None], np.stack([label, perturbed]), 128, estimate_camera)
    assert errors[1] is None and errors[0] < 4.0


# ---------------------------------------------------------------------------------------------------------- image


def test_image_metrics_known_answers():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    metrics = image.ImageMetrics("alex")
    same = metrics(x, x.clone())
    assert same["mse"].max() == 0 and torch.isinf(same["psnr"]).all()
    assert same["ssim"].numpy() == pytest.approx(1, abs=1e-9) and same["lpips"].max() < 1e-6
    shifted = metrics(x, x + 0.2)  # +0.1 on [0, 1]
    assert shifted["mse"].numpy() == pytest.approx(0.01, rel=1e-6)
    assert shifted["psnr"].numpy() == pytest.approx(20, rel=1e-6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    previous = None
    for sigma in (0.05, 0.2, 0.5):
        m = metrics(x, x + sigma * noise)
        if previous is not None:
            assert (m["ssim"] < previous["ssim"]).all() and (m["lpips"] > previous["lpips"]).all()
            assert (m["psnr"] < previous["psnr"]).all()
        previous = m
    assert "LPIPS-alex" in metrics.name


# ------------------------------------------------------------------------------------------------------------ FID


def test_fid_without_inception_weights_says_what_to_fetch(tmp_path, monkeypatch):
    from editkit.metrics import fid

    monkeypatch.setenv("EDITKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(fid.ENV, raising=False)
    with pytest.raises(CheckpointError, match=f"{fid.WEIGHTS_FILE}.*{tmp_path / 'cache'}.*releases/download"):
        fid.inception_weights_path()
    code = cli.main(["eval", "--models", "demo-teacher", "--fid", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2


# ------------------------------------------------------------------------------------------------------- the CLI


def test_eval_cli_on_random_generators_counts_missing_faces(tiny_eg3d, tmp_path, capsys):
    from editkit.checkpoints import save_model

    paths = []
    for name in ("G", "G_ema"):
        paths.append(save_model(tmp_path / f"{name}.safetensors", {"G": tiny_eg3d[name]}))
    out = tmp_path / "report"
    args = ["eval", "--models", f"first={paths[0]},{paths[1]}", "--n", "2", "--views", "2", "--samples", "2",
            "--noise-floor", "--noise-floor-n", "2", "--out", str(out)]
    assert cli.main(args) == 0
    results = json.loads((out / "metrics.json").read_text())
    first, second = results["models"]["first"], results["models"]["G_ema"]  # a label, a file name
    assert first["faces_found"] + first["no_face"] == 4 and first["faces_found_per_view"] == [0, 0]
    assert first["pose_deg"]["count"] == 0 and first["landmark_consistency"]["inner51"]["mean"] is None
    assert first["identity"]["different_latents"]["count"] == 0  # no faces, no pairs
    assert first["seconds_per_image"]["count"] == 2 and first["seconds_per_image"]["mean"] > 0
    assert "agreement_with_first" not in first and second["agreement_with_first"]["psnr"]["count"] == 4
    assert results["networks"]["identity"].startswith("dlib-resnet (not ArcFace)")
    floor = results["noise_floor"]
    assert floor["faces_found"] == 4 and floor["pose_deg_detected_landmarks"]["mean"] < 15
    assert floor["landmark_consistency_true_inner51"]["mean"] < 1e-4
    report = (out / "report.md").read_text()
    assert "| pose error (deg) ↓ |" in report and "0/4 |" in report and "noise floor" in report
    assert (out / "samples" / "0_first.png").is_file() and (out / "plots" / "pose_vs_yaw.png").is_file()
    capsys.readouterr()
    assert cli.main(args) == 2 and "already exists" in capsys.readouterr().err
    (out / "notes.txt").write_text("the user's")  # a forced rerun with other labels replaces the old run's files
    rerun = ["eval", "--models", f"renamed={paths[0]}", "--n", "1", "--views", "2", "--samples", "1", "--out",
             str(out), "--force"]
    assert cli.main(rerun) == 0
    files = json.loads((out / "metrics.json").read_text())["files"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == sorted([*files, "notes.txt"])
    assert "samples/0_renamed.png" in files and not (out / "samples" / "0_first.png").exists()
    same = ["eval", "--models", f"{paths[1]},G_ema={paths[0]}", "--out", str(tmp_path / "other")]
    assert cli.main(same) == 2 and "same label" in capsys.readouterr().err


def test_generator_images_reach_dlib_as_the_faces_they_are(renderer):
    """to_uint8 of (N, 3, H, W) renders is C-contiguous: dlib misreads strided views (it found 1 face in 20)."""
    import dlib

    from editkit.evaluation import to_uint8

    detector = dlib.get_frontal_face_detector()
    heads = sample_params(np.random.default_rng(7), 3)
    views = [shoot(renderer, head, yaw)[0] for head, yaw in zip(heads, (-30, 0, 30))]
    batch = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1  # as rendered
    images = to_uint8(batch)
    assert images.flags.c_contiguous and all(image.flags.c_contiguous for image in images)
    np.testing.assert_array_equal(images, np.stack(views))
    assert all(len(detector(image, 1)) == 1 for image in images)
