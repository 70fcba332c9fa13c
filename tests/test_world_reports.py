"""The demo world's measurement tools: generators against ground truth (training.world_report) and the stage-2
pose-attribute bias (training.pose_bias), on tiny networks and tiny datasets."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from editkit.checkpoints import save_model
from editkit.models.student import Student
from training import pose_bias, world_report
from training.fit_teacher import CONFIGS, build_teacher
from training.synthetic import dataset


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
    assert "depth_error" in report["models"]["teacher"] and "depth_error" not in report["models"]["student"]
    rates = report["dlib_detection"]
    assert set(rates) == {"ground_truth", "teacher", "student"} and rates["ground_truth"]["mean"] > 0.5
    sheet = np.asarray(Image.open(out / "samples.png"))
    assert sheet.shape == (2 * 128, 5 * 3 * 128 + 4 * 4, 3)  # 2 heads; 5 yaws x (truth, teacher, student) + gaps
    capsys.readouterr()
    assert world_report.main(["nowhere.safetensors", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: nowhere.safetensors")


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
    assert pose_bias.main(["--teacher", str(teacher), "--student", "=nameless", "--out", str(out)]) == 2
    assert "LABEL=NAME_OR_PATH" in capsys.readouterr().err
