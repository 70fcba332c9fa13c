"""The demo world's measurement tools: generators against ground truth (training.world_report), the stage-2
pose-attribute bias (training.pose_bias) and edit directions (training.edit_report), on tiny networks and tiny
datasets."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from editkit.checkpoints import load_generator, save_model
from editkit.editing import save_direction
from editkit.editing.supervised import fit_direction, sample_latents
from editkit.latents import camera_record, model_record, write_latent
from editkit.models.student import Student
from training import edit_report, pose_bias, world_report
from training.fit_teacher import CONFIGS, build_teacher
from training.make_directions import world_labels
from training.synthetic import dataset
from training.synthetic.head_model import HeadParams
from training.synthetic.latent import params_from_z


@pytest.fixture(scope="module")
def world_models(tmp_path_factory):
    """Paths of a tiny demo-world teacher (z = the world's latent) and of a student made from it."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    G = build_teacher(CONFIGS["tiny"]).eval()
    teacher = save_model(folder / "teacher.safetensors", {"G": G})
    student = save_model(folder / "student.safetensors", {"G": Student.from_teacher(G, width=0.25).eval()})
    return teacher, student


def test_world_report_measures_teacher_and_student_against_ground_truth(world_models, tmp_path, capsys):
    teacher, student = world_models
    out = tmp_path / "report"
    assert world_report.main([f"teacher={teacher}", f"student={student}", "--out", str(out), "--heads", "2",
                              "--detections", "2"]) == 0
    report = json.loads((out / "world_report.json").read_text())
    assert set(report["models"]) == {"teacher", "student"}
    for row in report["models"].values():
        assert 0 < row["psnr"] < 60 and 0 <= row["lpips_vgg"] <= 1.5 and len(row["psnr_per_yaw"]) == 5
        assert set(row["expression_response"]) == {"smile", "jaw_open", "eyes_closed", "brow_raise", "gaze"}
        assert all(-1 <= v["cosine"] <= 1 and v["size"] >= 0 for v in row["expression_response"].values())
    assert "depth_error" in report["models"]["teacher"] and "depth_error" not in report["models"]["student"]
    rates = report["dlib_detection"]
    assert set(rates) == {"ground_truth", "teacher", "student"} and rates["ground_truth"]["mean"] > 0.5
    sheet = np.asarray(Image.open(out / "samples.png"))
    assert sheet.shape == (2 * 128, 5 * 3 * 128 + 4 * 4, 3)  # 2 heads; 5 yaws x (truth, teacher, student) + gaps
    sheet = np.asarray(Image.open(out / "expressions.png"))
    assert sheet.shape == (5 * 2 * 128, 3 * 2 * 128 + 2 * 4, 3)  # 5 probes x 2 heads; (truth, teacher, student) x 2
    capsys.readouterr()
    assert world_report.main(["nowhere.safetensors", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: nowhere.safetensors")
    before = (out / "world_report.json").read_bytes()
    assert world_report.main([f"teacher={teacher}", "--out", str(out)]) == 2  # an existing report needs --force
    assert "world_report.json already exists; use --force" in capsys.readouterr().err
    assert (out / "world_report.json").read_bytes() == before


def test_skin_luma_and_drift_recover_a_known_bias():
    yaws = len(pose_bias.YAWS)
    teacher = torch.zeros(4, yaws, 3, 32, 32)  # mid grey: luma 0.5
    assert torch.allclose(pose_bias.skin_luma(teacher[:, 0]), torch.full((4,), 0.5))
    # a student that brightens the face by 0.01 (luma) per 10 deg of yaw, and one equal to the teacher
    ramp = torch.tensor(pose_bias.YAWS, dtype=torch.float32) / 10 * 0.01 * 2  # in [-1, 1] units: x2
    biased = teacher + ramp[None, :, None, None, None]
    result = pose_bias.measure({"teacher": teacher, "biased": biased, "same": teacher.clone()})
    assert result["biased"]["slope"] == pytest.approx(0.01, abs=1e-4)
    assert result["same"]["slope"] == 0 and result["same"]["drift"] == [0.0] * yaws
    # only the central patch counts: a change in the corners is not skin
    corners = teacher.clone()
    corners[..., :4, :4] = 1
    assert pose_bias.measure({"teacher": teacher, "corners": corners})["corners"]["slope"] == 0


def test_pose_bias_end_to_end_sees_the_bias_of_a_real_set(world_models, tmp_path, capsys):
    teacher, student = world_models
    biased, unbiased = tmp_path / "biased", tmp_path / "unbiased"
    # same seed: the same heads and cameras, only the skin tone differs (tied to yaw in the biased set)
    dataset.write_dataset(biased, heads=60, views=1, seed=3, resolution=64, yaw_corr=0.9,
                          yaw_corr_attr="skin_tone", log=None)
    dataset.write_dataset(unbiased, heads=60, views=1, seed=3, resolution=64, log=None)
    out = tmp_path / "bias"
    assert pose_bias.main(["--teacher", str(teacher), "--student", f"s={student}", "--n", "3", "--out", str(out),
                           "--real", str(biased), str(unbiased)]) == 0
    report = json.loads((out / "pose_bias.json").read_text())
    assert report["real_set"]["slope_bias"] < -0.02  # heads turned right are darker
    assert len(report["students"]["s"]["drift"]) == len(pose_bias.YAWS)
    assert Image.open(out / "pose_bias.png").size[0] > 100
    sheet = np.asarray(Image.open(out / "pose_bias_samples.png"))
    assert sheet.shape[1] == len(pose_bias.YAWS) * 128 and sheet.shape[0] == 2 * 2 * 128 + 6
    assert "| s |" in capsys.readouterr().out
    assert pose_bias.main(["--teacher", str(teacher), "--student", "=nameless", "--out", str(out), "--force"]) == 2
    assert "LABEL=NAME_OR_PATH" in capsys.readouterr().err
    assert pose_bias.main(["--teacher", str(teacher), "--student", f"s={student}", "--out", str(out)]) == 2
    assert "pose_bias.json already exists; use --force" in capsys.readouterr().err


def test_ridge_probe_recovers_a_linear_relation_on_held_out_features():
    rng = np.random.default_rng(0)
    factors = rng.standard_normal((300, 4))
    for mixing in (rng.standard_normal((4, 40)), rng.standard_normal((4, 600))):  # fewer and more features than rows
        x = factors @ mixing + 0.05 * rng.standard_normal((300, mixing.shape[1]))
        y = np.stack([3 * factors[:, 0] - factors[:, 2] + 5, rng.standard_normal(300), np.zeros(300)], 1)
        probe = edit_report.Ridge.fit(x[:200], y[:200])
        r2 = probe.r2(x[200:], y[200:])
        assert r2[0] > 0.97 and r2[1] < 0.1 and np.isnan(r2[2])  # linear, unrelated noise, constant
        predicted = probe.predict(x[200:])[:, 0]  # in the target's units
        assert np.abs(predicted - y[200:, 0]).mean() < 0.3


def test_probe_measures_find_the_own_change_and_the_largest_other():
    strengths = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    names = list(edit_report.TARGETS)
    predicted = np.zeros((3, 5, len(names)))
    predicted[..., names.index("smile")] += 0.8 * strengths  # the own attribute: 0.8 std per unit
    predicted[..., names.index("smile_l")] += 0.9 * strengths  # a part of it: not an 'other' attribute
    predicted[..., names.index("skin_tone")] -= 0.3 * strengths
    predicted[..., names.index("id03")] += 0.1 * np.abs(strengths)
    predicted[:, :, names.index("id05")] += np.array([0.0, 1.0, 2.0])[:, None]  # heads differ, edits keep it
    r2 = dict.fromkeys(names, 0.9) | {"light_azimuth": 0.1}
    predicted[..., names.index("light_azimuth")] += 5 * strengths  # its probe is too weak to count
    direction = edit_report.Direction(np.ones((1, 8), np.float32), "smile", "test")
    numbers = edit_report.probe_measures(direction, strengths, predicted, r2, min_r2=0.25)
    assert numbers["own_slope"] == pytest.approx(0.8) and numbers["own_slope_std_over_latents"] == 0
    assert numbers["largest_other"] == "skin_tone" and numbers["largest_other_slope"] == pytest.approx(-0.3)
    assert numbers["identity_probes"] == 40 and numbers["identity_shift_at_max"] == pytest.approx(0.2)
    assert numbers["identity_between_heads"] == pytest.approx(4 / 3, abs=1e-3)  # |0-1|, |0-2|, |1-2|


def face_points(brow_lift: float, seed: int = 1) -> np.ndarray:
    """68 landmarks: eye centres 40 px apart, brows 15 + brow_lift px above them (brow_raise = (15 + lift) / 40),
    the other points random."""
    points = np.random.default_rng(seed).uniform(0, 100, (68, 2))
    ring = np.array([[-5, 0], [-2, -2], [2, -2], [5, 0], [2, 2], [-2, 2]])  # an eye's six points, centred
    points[36:42], points[42:48] = [40, 50] + ring, [80, 50] + ring
    points[17:22], points[22:27] = [40, 35 - brow_lift], [80, 35 - brow_lift]
    return points


def test_landmark_response_measures_how_a_score_follows_the_truth():
    rng = np.random.default_rng(1)
    labels = rng.standard_normal(40)
    landmarks = [face_points(2 * label + rng.normal(0, 0.1)) for label in labels]  # 2 px per standard deviation
    landmarks[3] = landmarks[7] = None  # no face found there
    response = edit_report.landmark_response("brow_raise", landmarks, labels)
    assert response["faces"] == 38 and response["slope_per_std"] == pytest.approx(2 / 40, rel=0.02)
    assert response["r"] > 0.99
    assert edit_report.landmark_response("smile", landmarks, labels)["r"] == pytest.approx(0, abs=0.4)
    assert edit_report.landmark_response("brow_raise", landmarks, np.ones(40)) == {"faces": 38}  # nothing varies


def test_face_measures_give_the_landmark_slope_and_its_spread_over_latents():
    strengths = np.array([-1.0, 0.0, 1.0])
    descriptor = np.zeros(128)
    faces = [[{"landmarks": face_points(gain * s), "descriptor": descriptor, "yaw": 0.0, "pitch": 0.0}
              for s in strengths] for gain in (1.0, 2.0, 3.0)]  # the brows of latent m rise m + 1 px per unit
    faces[2][0] = None  # no face: latent 2 counts with its other strength only
    numbers = edit_report.face_measures("brow_raise", strengths, faces)
    assert numbers["faces_found"] == 8 and numbers["pairs_with_faces"] == 5
    assert numbers["landmark_score_slope"] == pytest.approx((1 + 1 + 2 + 2 + 3) / 5 / 40)  # pooled over pairs
    assert numbers["landmark_score_slope_sem"] == pytest.approx(1 / np.sqrt(3) / 40, abs=1e-4)  # 1, 2, 3 px / 40
    assert numbers["same_person_share"] == 1 and numbers["yaw_change_deg"] == 0


def test_probe_samples_show_the_measured_rare_expressions(world_models):
    G = load_generator(world_models[0])
    z, _ = edit_report.probe_samples(G, 400, 3, 0.0, ["eyes_closed"])
    assert np.array_equal(z, sample_latents(G, 400, seed=3)[0])  # no emphasis: the plain samples

    def blinking(z):
        return (world_labels("eyes_closed", params_from_z(z))[0] > 0).mean()

    assert blinking(z) < 0.1
    targets = edit_report.world_targets(z)  # in standard deviations over the world's own distribution
    varying = targets.std(0) > 0
    assert np.allclose(targets.std(0)[varying], 1, atol=0.2) and varying.mean() > 0.9
    z, ws = edit_report.probe_samples(G, 400, 3, 0.5, ["eyes_closed"])
    assert 0.4 < blinking(z) < 0.7 and ws.shape[:2] == (400, G.num_ws)
    assert edit_report.world_targets(z)[:, edit_report.TARGETS.index("eyes_closed")].std() > 1.5  # the same unit


def test_edit_report_end_to_end(world_models, tmp_path, capsys):
    teacher, student = world_models
    G = load_generator(teacher)
    z, ws = sample_latents(G, 200, seed=5)
    labels = params_from_z(z)[:, HeadParams.index("skin_tone")]
    path = save_direction(tmp_path / "skin_tone.npy", fit_direction(ws, labels, "skin_tone"))
    smile = save_direction(tmp_path / "smile.npy", fit_direction(ws, world_labels("smile", params_from_z(z))[0],
                                                                 "smile"))
    photos = tmp_path / "inverted"  # as `editkit invert` writes them: one folder per photo
    for k, name in enumerate(["anna", "ben", "cleo"]):
        write_latent(photos / name, torch.from_numpy(ws[k:k + 1]), {"model": model_record(student),
                                                                    "camera": camera_record(10.0, 0.0)})
    out = tmp_path / "edits"
    args = ["--model", str(teacher), "--student", f"small={student}", "--direction", str(path), "--direction",
            str(smile), "--out", str(out), "--train", "12", "--heldout", "4", "--latents", "2", "--strengths", "-1",
            "1", "--photos", str(photos)]
    assert edit_report.main(args) == 0
    report = json.loads((out / "edit_report.json").read_text())
    assert list(report["models"]) == ["teacher", "small"] and list(report["photos"]["models"]) == ["teacher", "small"]
    assert report["photos"]["latents"] == ["anna", "ben", "cleo"]
    assert set(report["ground_truth_probe_r2"]) == set(edit_report.TARGETS)
    for model, photo_model in zip(report["models"].values(), report["photos"]["models"].values()):
        assert set(model["probe_r2"]) == set(edit_report.TARGETS)
        per_yaw, photo_per_yaw = model["directions"]["skin_tone"], photo_model["directions"]["skin_tone"]
        assert set(per_yaw) == set(photo_per_yaw) == {"+0", "-30", "+30"}
        assert per_yaw["+0"]["images"] == 2 * 3 and isinstance(per_yaw["+0"]["own_slope"], float)
        assert photo_per_yaw["+0"]["images"] == 3 * 3 and isinstance(photo_per_yaw["+0"]["own_slope"], float)
    truth, smile_entry = report["ground_truth_landmark_response"], report["directions"]["smile"]
    assert list(truth) == ["smile"] and truth["smile"]["faces"] >= 3  # skin tone has no landmark score
    assert smile_entry["expected_landmark_slope"] == pytest.approx(
        smile_entry["expected_slope"] * truth["smile"]["slope_per_std"], abs=1e-4)
    assert "expected_landmark_slope" not in report["directions"]["skin_tone"]
    assert all(list(m["landmark_response"]) == ["smile"] for m in report["models"].values())
    grid = Image.open(out / "edit_grid.png")
    assert grid.size == (80 + 2 * 3 * 128 + 8, 28 + 2 * 128)  # 3 strengths x 2 models; two directions
    assert Image.open(out / "photo_grid.png").size == grid.size
    table = capsys.readouterr().out
    assert "| teacher | skin_tone |" in table and "| small | skin_tone |" in table
    assert "| probe | ground truth | teacher | small |" in table
    assert "| landmark score | ground truth | teacher | small |" in table and "| smile | " in table
    assert "Inverted photos (anna, ben, cleo)" in table
    stranger = tmp_path / "stranger"  # a latent of a model outside the measured w space is refused
    write_latent(stranger, torch.from_numpy(ws[:1]), {"model": {"name": "other", "sha256": "0" * 64},
                                                      "camera": camera_record(0.0, 0.0)})
    assert edit_report.main(args[:-1] + [str(stranger), "--force"]) == 2
    assert "does not share the w space" in capsys.readouterr().err
    assert edit_report.main(args) == 2  # outputs exist: --force needed
    assert "--force" in capsys.readouterr().err
    assert edit_report.main(["--model", str(teacher), "--attrs", "nosuch", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: no shipped direction 'nosuch'")
    assert edit_report.main(["--model", "nowhere.safetensors", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: nowhere.safetensors")
