"""The demo world: head model, renderer, dataset writer, shipped landmark template and examples."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from editkit import cameras
from editkit.errors import EditkitError
from training.synthetic import dataset
from training.synthetic.head_model import (EXPRESSION_UNITS, PARAM_NAMES, HeadModel, HeadModelError, HeadParams,
                                          default_model, ffhq_crop, sample_params)
from training.synthetic.render import RAY_END, HeadRenderer, RendererError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return default_model()


@pytest.fixture(scope="module")
def renderer(model):
    r = HeadRenderer(128, model=model)
    yield r
    r.release()


def dlib_predictor():
    dlib = pytest.importorskip("dlib")
    models = importlib.util.find_spec("face_recognition_models").submodule_search_locations[0] + "/models"
    return dlib, dlib.shape_predictor(models + "/shape_predictor_68_face_landmarks.dat")


def test_parameter_layout():
    assert len(PARAM_NAMES) == HeadParams.SIZE == HeadParams.lighting.stop
    assert HeadParams.identity.stop == HeadParams.expression.start and HeadParams.expression.stop == \
        HeadParams.appearance.start and HeadParams.appearance.stop == HeadParams.lighting.start
    assert PARAM_NAMES[HeadParams.expression][:3] == ("smile_l", "smile_r", "jaw_open")
    assert HeadParams.index("blink_r") == HeadParams.expression.start + list(EXPRESSION_UNITS).index("blink_r")
    with pytest.raises(HeadModelError, match="unknown head parameter"):
        HeadParams.index("moustache")


def test_sample_params_deterministic_and_in_range():
    a, b = sample_params(np.random.default_rng(5), 400), sample_params(np.random.default_rng(5), 400)
    assert a.dtype == np.float32 and a.shape == (400, HeadParams.SIZE) and np.array_equal(a, b)
    assert np.all(np.abs(a[:, HeadParams.identity]) <= 2.5) and 0.8 < a[:, HeadParams.identity].std() < 1.2
    for part in (HeadParams.expression, HeadParams.appearance):
        assert a[:, part].min() >= 0 and a[:, part].max() <= 1
    smiling = (a[:, HeadParams.index("smile_l")] > 0).mean()
    assert 0.35 < smiling < 0.65


def test_vertices_batch_matches_single_and_bad_shapes_raise(model):
    p = sample_params(np.random.default_rng(0), 3)
    batch = model.vertices(p)
    assert batch.shape == (3, model.num_vertices, 3)
    assert np.allclose(batch[1], model.vertices(p[1]), atol=1e-6)
    with pytest.raises(HeadModelError, match="shape"):
        model.vertices(np.zeros(HeadParams.SIZE + 1))
    with pytest.raises(HeadModelError, match="cannot read head model"):
        HeadModel.load(ROOT / "no_such_model.npz")


def test_every_head_fits_eg3d_box(model):
    rng = np.random.default_rng(1)
    p = sample_params(rng, 300)
    p[:, HeadParams.expression] = rng.uniform(0, 1, (300, len(EXPRESSION_UNITS)))  # even implausible mixtures
    p[:, HeadParams.index("hair_length")] = 1
    v = model.vertices(p)
    assert np.abs(v).max() < 0.45
    assert v[..., 2].max(1).min() > 0.15  # the face looks towards +z
    # between EG3D's ray_start 2.25 and ray_end 3.3 from cameras of the dataset writer's pose range
    _, origin, _ = cameras.label_to_pose(cameras.make_label(rng.uniform(-60, 60, 300), rng.uniform(-25, 25, 300)))
    distance = np.linalg.norm(v - origin.numpy()[:, None], axis=-1)
    assert 2.25 < distance.min() and distance.max() < 3.3


def test_render_outputs(renderer):
    p = HeadParams.neutral()
    label = cameras.make_label(20, -5)[0].numpy()
    out = renderer.render(p, label)
    r = 128
    assert out["image"].shape == (r, r, 3) and out["image"].dtype == np.float32
    assert out["depth"].shape == out["mask"].shape == (r, r)
    assert out["landmarks2d"].shape == (68, 2) and out["landmarks3d"].shape == (68, 3)
    background = out["mask"] == 0
    assert 0.3 < (~background).mean() < 0.8 and set(np.unique(out["mask"])) <= {0, 0.25, 0.5, 0.75, 1}
    assert np.all(out["image"][background] == 1.0)  # white background, as EG3D's white_back rendering
    assert np.all(out["depth"][background] == RAY_END)
    inside = out["mask"] == 1
    assert 2.25 < out["depth"][inside].min() and out["depth"][inside].max() < RAY_END
    # landmarks project like editkit.cameras, and depth is the distance along the ray (nose tip, 30)
    projected = cameras.project(torch.tensor(out["landmarks3d"])[None], torch.tensor(label)[None], r)[0]
    assert np.allclose(out["landmarks2d"], projected.numpy(), atol=1e-3)
    x, y = out["landmarks2d"][30].astype(int)
    distance = np.linalg.norm(out["landmarks3d"][30] - label[:16].reshape(4, 4)[:3, 3])
    assert abs(out["depth"][y, x] - distance) < 0.01
    assert renderer.render(p, label)["image"].tobytes() == out["image"].tobytes()  # deterministic


def test_background_colour_and_batch(model):
    r = HeadRenderer(32, model=model, background=(0.0, 0.0, 0.0))
    p = sample_params(np.random.default_rng(2), 2)
    labels = cameras.make_label([0, 30], [0, 10]).numpy()
    out = r.render_batch(p, labels)
    assert out["image"].shape == (2, 32, 32, 3) and out["landmarks2d"].shape == (2, 68, 2)
    assert np.all(out["image"][out["mask"] == 0] == 0)
    with pytest.raises(RendererError, match="25-float label"):
        r.render(p[0], labels[0, :16])
    r.release()


def test_frontal_mean_head_is_framed_like_ffhq(renderer):
    out = renderer.render(HeadParams.neutral(), cameras.frontal_label()[0].numpy())
    centre, size = ffhq_crop(out["landmarks2d"])
    assert np.allclose(centre, 64, atol=1.5) and abs(size - 128) < 2.5


def test_landmark_template_is_the_mean_head_and_its_shape_basis(model):
    template = json.loads((ROOT / "editkit" / "data" / "head_landmarks68.json").read_text())
    mean = model.landmarks3d(HeadParams.neutral())
    assert np.allclose(np.array(template["landmarks"]), mean, atol=1e-4)
    basis = np.array(template["identity_basis"]).reshape(-1, 68, 3)
    params = sample_params(np.random.default_rng(0), 1, expression=False)[0]
    coefficients = params[HeadParams.identity]
    assert len(basis) == len(coefficients)
    # landmarks 17-67 are linear in the identity coefficients (the jaw contour is picked per view)
    moved = mean + np.tensordot(coefficients, basis, 1)
    assert np.allclose(moved[17:], model.landmarks3d(params)[17:], atol=2e-4)


def test_jaw_contour_follows_the_view(model):
    p = HeadParams.neutral()
    left = model.landmarks3d(p, cameras.make_label(-35, 0)[0].numpy())
    right = model.landmarks3d(p, cameras.make_label(35, 0)[0].numpy())
    assert np.array_equal(left[17:], right[17:]) and np.array_equal(left[8], right[8])
    # seen from the subject's right (yaw < 0), the left-hand contour (points 9-16) is a silhouette further forward
    assert np.all(left[10:16, 2] > right[10:16, 2])


def test_dlib_finds_faces_in_random_renders(renderer):
    dlib = pytest.importorskip("dlib")
    detector = dlib.get_frontal_face_detector()
    rng = np.random.default_rng(11)
    n = 30
    p = sample_params(rng, n)
    labels = cameras.make_label(rng.uniform(-35, 35, n), np.clip(rng.normal(0, 7, n), -20, 20)).numpy()
    found = sum(len(detector(np.round(renderer.render(q, c)["image"] * 255).astype(np.uint8), 1)) > 0
                for q, c in zip(p, labels))
    assert found / n >= 0.9


def mouth_width(lm2d, lm3d):
    return np.linalg.norm(lm2d[54] - lm2d[48])


def mouth_width_3d(lm2d, lm3d):  # dlib follows one-sided smiles only part of the way: use the known vertices
    return np.linalg.norm(lm3d[54] - lm3d[48])


def lid_gap(eye):  # dlib hardly sees synthetic blinks: use the known 3D lid vertices
    upper, lower = ([37, 38], [41, 40]) if eye == "right" else ([43, 44], [47, 46])
    return lambda lm2d, lm3d: (lm3d[upper, 1] - lm3d[lower, 1]).mean()


def inner_lip_gap(lm2d, lm3d):
    return np.linalg.norm(lm2d[66] - lm2d[62])


def brow_height_3d(lm2d, lm3d):  # dlib's brows barely follow painted brows up: use the known vertices
    return lm3d[17:27, 1].mean() - lm3d[36:48, 1].mean()


# units (set together) -> (score from dlib's 2D landmarks in inter-ocular distances, or from the true 3D ones; sign)
SCORES = {("smile_l", "smile_r"): (mouth_width, 1), ("smile_l",): (mouth_width_3d, 1),
          ("smile_r",): (mouth_width_3d, 1), ("jaw_open",): (inner_lip_gap, 1), ("blink_l",): (lid_gap("left"), -1),
          ("blink_r",): (lid_gap("right"), -1), ("brow_raise",): (brow_height_3d, 1),
          ("mouth_funnel",): (mouth_width, -1)}


def expression_scores(renderer, units, weights, heads=20):
    """Mean score per unit weight over `heads` random heads without other expression, frontal camera."""
    dlib, predictor = dlib_predictor()
    score, _ = SCORES[units]
    base = sample_params(np.random.default_rng(3), heads, expression=False)
    label = cameras.frontal_label()[0].numpy()
    scores = np.zeros((heads, len(weights)))
    for i, p in enumerate(base):
        for j, w in enumerate(weights):
            q = p.copy()
            q[[HeadParams.index(u) for u in units]] = w
            out = renderer.render(q, label)
            box = out["landmarks2d"]
            rect = dlib.rectangle(*[int(v) for v in (*box.min(0) - 4, *box.max(0) + 4)])
            image = np.round(out["image"] * 255).astype(np.uint8)
            lm = np.array([[pt.x, pt.y] for pt in predictor(image, rect).parts()], float)
            lm /= np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
            scores[i, j] = score(lm, out["landmarks3d"])
    return scores.mean(0)


@pytest.mark.parametrize("units", list(SCORES), ids="+".join)
def test_expression_units_move_their_scores_monotonically(renderer, units):
    scores = expression_scores(renderer, units, [0.0, 0.33, 0.67, 1.0])
    assert np.all(SCORES[units][1] * np.diff(scores) > 0), scores


def test_dataset_writer_layout_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        dataset.write_dataset(out, heads=3, views=2, seed=4, resolution=32, depth=True, log=None)
    labels = json.loads((a / "dataset.json").read_text())["labels"]
    assert len(labels) == 6 and all(len(c) == 25 and (a / f).is_file() for f, c in labels)
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f, _ in labels)
    gt = np.load(a / "ground_truth.npz")
    assert gt["params"].shape == (6, HeadParams.SIZE) and gt["landmarks2d"].shape == (6, 68, 2)
    assert gt["depth"].shape == (6, 32, 32) and list(gt["filenames"]) == [f for f, _ in labels]
    assert np.array_equal(gt["head"], [0, 0, 1, 1, 2, 2])
    assert np.array_equal(gt["params"][0], gt["params"][1])  # views of a head share its parameters
    yaw, _ = cameras.label_to_yaw_pitch(torch.tensor(gt["labels"]))
    assert np.allclose(yaw.numpy(), gt["yaw"], atol=1e-3)
    with pytest.raises(EditkitError, match="exists"):
        dataset.write_dataset(a, heads=1, views=1, log=None)
    assert dataset.main(["--out", str(a), "--heads", "1"]) == 2


def test_yaw_correlation_knob():
    rng = np.random.default_rng(0)
    yaw, _ = dataset.sample_poses(rng, 4000)
    params = sample_params(rng, 4000)
    biased = dataset.correlate_with_yaw(params, yaw, 0.8, rng)
    smile = biased[:, HeadParams.index("smile_l")]
    assert np.corrcoef(yaw, smile)[0, 1] > 0.6 and np.array_equal(smile, biased[:, HeadParams.index("smile_r")])
    assert np.array_equal(biased[:, HeadParams.identity], params[:, HeadParams.identity])
    tone = HeadParams.index("skin_tone")
    darker = dataset.correlate_with_yaw(params, yaw, 0.8, rng, "skin_tone")
    assert np.corrcoef(yaw, darker[:, tone])[0, 1] > 0.6
    # the marginal stays the world's Beta(1, 2.2): same mean and spread as the unbiased tones
    assert abs(darker[:, tone].mean() - params[:, tone].mean()) < 0.02
    assert abs(darker[:, tone].std() - params[:, tone].std()) < 0.02
    assert np.array_equal(np.delete(darker, tone, 1), np.delete(params, tone, 1))
    with pytest.raises(EditkitError, match="yaw-corr"):
        dataset.write_dataset(Path("unused"), heads=1, views=1, yaw_corr=1.5, log=None)
    with pytest.raises(EditkitError, match="yaw-corr-attr"):
        dataset.correlate_with_yaw(params, yaw, 0.5, rng, "hair_length")


def test_examples_have_ground_truth():
    examples = sorted((ROOT / "examples").glob("synthetic_*.png"))
    assert len(examples) >= 4 and (ROOT / "examples" / "astronaut.png").is_file()
    for png in examples:
        truth = json.loads(png.with_suffix(".json").read_text())
        assert len(truth["landmarks2d"]) == 68 and len(truth["label"]) == 25
        assert list(truth["params"]) == list(PARAM_NAMES)
