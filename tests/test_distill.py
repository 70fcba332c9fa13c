"""The distillation trainer on a tiny teacher: losses go down, torchrun keeps processes in step, kill -9 + resume
repeats an uninterrupted run exactly, the PC-GAN mode runs, bad inputs are clear errors.

Runs that must be compared bit for bit, or need their own processes, run as subprocesses with one thread each.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from editkit import cameras, checkpoints
from editkit.models.student import Student
from training.distill.__main__ import main
from editkit.editing.directions import Direction, save_direction
from training.distill.data import (DatasetError, RealImages, TeacherSampler, balancing_weights, edit_pairs, judged,
                                   load_pair_directions, real_slots)
from training.distill.losses import change_loss
from training.distill.loop import ema_decay
from training.distill.runs import RunError, RunFolder
from training.state import state_files

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# stage 2 with real images and R1 on every other step: every part of the training state is exercised
STAGE2 = ["--stage", "2", "--batch", "1", "--real-ratio", "0.5", "--lpips-weight", "0", "--r1-interval", "2",
          "--ckpt-every", "2", "--log-every", "2", "--sample-every", "0", "--steps", "8"]


@pytest.fixture(scope="module")
def teacher_file(tiny_eg3d, tmp_path_factory):
    """The tiny teacher (G_ema and D) in editkit's format."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    return checkpoints.save_model(path, {"G_ema": tiny_eg3d["G_ema"], "D": tiny_eg3d["D"]})


def write_real_folder(folder: Path, n: int = 6, size: int = 128) -> Path:
    """An EG3D-layout folder: n pictures of coloured blocks with camera labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = []
    for i in range(n):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((size // 4, size // 4, 1), np.uint8))).save(folder / f"img{i}.png")
        labels.append([f"img{i}.png", cameras.to_json(cameras.make_label(rng.normal(0, 18), rng.normal(0, 7)))])
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    return folder


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    return write_real_folder(tmp_path_factory.mktemp("data") / "real")


def distill_command(teacher, out, *options):
    return [sys.executable, "-m", "training.distill", "--teacher", str(teacher), "--out", str(out), *options]


def run(command) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(out: Path, key: str) -> list:
    return [r[key] for r in read_log(out) if key in r]


def read_log(out: Path) -> list:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def final_state(out: Path) -> dict:
    return torch.load(state_files(out / "checkpoints")[0], weights_only=True)


def assert_same_tensors(a, b, where=""):
    """Nested dicts/lists of tensors and numbers are equal bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def stage2_run(teacher_file, real_folder, tmp_path_factory):
    """An uninterrupted 8-step stage-2 run (subprocess, one thread): the reference for the resume test."""
    out = tmp_path_factory.mktemp("stage2") / "run"
    run(distill_command(teacher_file, out, "--real", str(real_folder), *STAGE2))
    return out


def test_stage2_lowers_the_reconstruction_loss_and_trains_the_discriminator(stage2_run):
    l1 = losses(stage2_run, "l1")
    assert len(l1) == 4 and l1[-1] < 0.7 * l1[0]
    assert len(losses(stage2_run, "d_loss")) == 4 and len(losses(stage2_run, "r1")) == 4
    state = final_state(stage2_run)
    assert state["step"] == 8 and state["D"] and state["opt_d"]["state"]


def test_kill_9_then_resume_repeats_the_uninterrupted_run(teacher_file, real_folder, stage2_run, tmp_path):
    out = tmp_path / "run"
    command = distill_command(teacher_file, out, "--real", str(real_folder), *STAGE2)
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(state_files(out / "checkpoints")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    newest = state_files(out / "checkpoints")[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # a damaged newest checkpoint: resume falls back to the older one
    done = run(command)
    assert f"skipping unreadable training state {newest.name}" in done.stderr
    training_state = ("step", "student", "student_ema", "D", "opt_g", "opt_d")
    resumed, reference = final_state(out), final_state(stage2_run)
    assert_same_tensors({k: resumed[k] for k in training_state}, {k: reference[k] for k in training_state})
    assert_same_tensors(load_file(out / "student.safetensors"), load_file(stage2_run / "student.safetensors"))
    timing = ("elapsed_s", "images_per_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in read_log(stage2_run)]
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_log(out)] == strip


def test_a_run_resumes_with_an_option_newer_than_it_left_off_and_refuses_it_turned_on(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_config({"batch": 4, "minutes": 10})
    folder.check_config({"batch": 4, "minutes": 20, "pair_balance": False}, may_change=("minutes",))
    for changed in ({"batch": 8, "minutes": 10}, {"batch": 4, "minutes": 10, "pair_balance": True}):
        with pytest.raises(RunError, match="resume with the same options"):
            folder.check_config(changed, may_change=("minutes",))


def test_two_torchrun_processes_keep_identical_weights(teacher_file, real_folder, tmp_path):
    out = tmp_path / "run"
    command = distill_command(teacher_file, out, "--real", str(real_folder), *STAGE2)
    command[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.distill"]
    command[command.index("--steps") + 1] = "2"
    command[command.index("--ckpt-every") + 1] = "1"
    run(command)
    checks = [r for r in read_log(out) if r.get("event") == "checkpoint"]
    assert [r["step"] for r in checks] == [1, 2]
    for record in checks:
        assert len(record["fingerprints"]) == 2 and record["fingerprints"][0] == record["fingerprints"][1]


def test_stage1_lowers_its_loss_and_writes_samples_and_the_student(teacher_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--teacher", str(teacher_file), "--out", str(out), "--stage", "1", "--batch", "2", "--steps", "10",
            "--lpips-net", "alex", "--lpips-weight", "0.5", "--log-every", "2", "--sample-every", "10",
            "--ema-beta", "0.5"]
    assert main(argv) == 0
    g_loss, lpips = losses(out, "g_loss"), losses(out, "lpips")
    assert len(g_loss) == 5 and g_loss[-1] < 0.7 * g_loss[0] and len(lpips) == 5
    grid = Image.open(out / "samples" / "step-00000010.png")
    assert grid.size == (2 * 5 * 128 + 8, 4 * 128)  # teacher | student, 5 yaws, 4 latents
    student = checkpoints.load_generator(out / "student.safetensors")
    assert isinstance(student, Student)
    provenance = checkpoints.read_config(out / "student.safetensors")["provenance"]
    assert provenance["command"].startswith("python -m training.distill --teacher")
    assert provenance["data"]["teacher_sha256"] == checkpoints.sha256_file(teacher_file)
    assert provenance["training"]["steps"] == 10 and provenance["metrics"]["g_loss"] == g_loss[-1]


def test_stage2_real_images_keep_edit_pairs_on_one_camera():
    gen = torch.Generator().manual_seed(0)
    slots = torch.stack([real_slots(9, 0.5, True, gen) for _ in range(400)]).float()
    assert slots[:, 4:8].sum() == 0  # partners keep their pair's camera
    assert abs(slots[:, :4].mean() - 0.5) < 0.05 and abs(slots[:, 8].mean() - 0.5) < 0.1
    assert abs(torch.stack([real_slots(8, 0.3, False, gen) for _ in range(400)]).float().mean() - 0.3) < 0.05
    assert judged(9, True).tolist() == [0, 1, 2, 3, 8] and judged(4, False).tolist() == [0, 1, 2, 3]


def test_edit_pairs_train_the_students_change_along_directions(teacher_file, tiny_eg3d, real_folder, tmp_path):
    G = tiny_eg3d["G_ema"]
    vector = np.random.default_rng(0).standard_normal((1, G.w_dim)).astype(np.float32)
    folder = tmp_path / "directions"
    save_direction(folder / "a.npy", Direction(vector / np.linalg.norm(vector), "a", "test"))
    save_direction(folder / "b.npy", Direction(-vector / np.linalg.norm(vector), "b", "test"))
    directions = load_pair_directions([folder], G.num_ws, G.w_dim)
    assert directions.shape == (2, G.num_ws, G.w_dim)
    ws, c = torch.randn(5, G.num_ws, G.w_dim), cameras.make_label([-20.0, 0, 10, 20, 30], 5.0).float()
    paired, paired_c, pick = edit_pairs(ws, c, directions, 2.0, torch.Generator().manual_seed(0))
    assert torch.equal(paired_c[:2], paired_c[2:4]) and torch.equal(paired[:2], ws[:2])
    assert torch.equal(paired[4], ws[4])  # the odd one out
    moved = paired[2:4] - ws[:2]
    along = (moved * directions[pick]).sum((1, 2)) / directions[pick].pow(2).sum((1, 2))
    torch.testing.assert_close(moved, along[:, None, None] * directions[pick])  # along the picked direction
    assert (along.abs() <= 2.0).all() and (along != 0).all()
    basis = torch.linalg.qr(torch.randn(G.num_ws * G.w_dim, 2))[0].T.reshape(2, G.num_ws, G.w_dim)  # orthonormal
    mixed, mixed_c, none = edit_pairs(ws, c, basis, 2.0, torch.Generator().manual_seed(0), mix=True)
    assert none is None and torch.equal(mixed_c[:2], mixed_c[2:4]) and torch.equal(mixed[4], ws[4])
    amounts = ((mixed[2:4] - ws[:2])[:, None] * basis).sum((2, 3))  # (pairs, directions): every pair moves along all
    torch.testing.assert_close(mixed[2:4] - ws[:2], torch.einsum("pk,kld->pld", amounts, basis))
    assert (amounts.abs() <= 2.0).all() and (amounts.abs() > 1e-4).all()
    # both halves of a pair see the same ray offsets: an unedited pair renders identically
    sampler = TeacherSampler(G)
    same = torch.cat([ws[:2], ws[:2]])
    images = sampler.render_pairs(same, paired_c[:4], seed=3)
    torch.testing.assert_close(images[:2], images[2:], rtol=0, atol=1e-5)
    torch.manual_seed(3)
    assert (sampler.render(same, paired_c[:4])[:2] - images[2:]).abs().max() > 1e-3  # what one batch would give
    target = torch.randn(4, 3, 8, 8)
    assert change_loss(target, target, paired_c[:4]) == 0
    assert change_loss(target + torch.randn_like(target), target, paired_c[:4]) > 0
    apart = paired_c[:4].clone()
    apart[2] = apart[3]  # the first pair's cameras differ (stage 2's real images): left out
    shifted = target.clone()
    shifted[0] += 1
    assert change_loss(shifted, target, apart) == 0
    assert change_loss(shifted, target, paired_c[:4], torch.tensor([0.0, 1.0])) == 0  # a pair weighted 0 is out
    torch.testing.assert_close(change_loss(shifted, target, paired_c[:4], torch.tensor([2.0, 1.0])),
                               2 * change_loss(shifted, target, paired_c[:4]))
    out = tmp_path / "run"
    argv = ["--teacher", str(teacher_file), "--out", str(out), "--stage", "1", "--batch", "2", "--steps", "2",
            "--lpips-weight", "0", "--log-every", "1", "--sample-every", "0", "--edit-pairs", str(folder)]
    assert main(argv) == 0
    assert len(losses(out, "pairs")) == 2 and all(v > 0 for v in losses(out, "pairs"))
    stage2 = tmp_path / "stage2"  # real images take cameras: every step's pair still repeats one camera
    argv = [*argv[:3], str(stage2), "--stage", "2", "--student", str(out / "student.safetensors"), "--real",
            str(real_folder), "--real-ratio", "0.5", *argv[6:]]
    assert main([*argv, "--pair-balance"]) == 0
    assert len(losses(stage2, "pairs")) == 2 and all(v > 0 for v in losses(stage2, "pairs"))
    mixed = tmp_path / "mixed"
    assert main([*argv[:3], str(mixed), *argv[4:], "--pair-mix"]) == 0
    assert len(losses(mixed, "pairs")) == 2 and all(v > 0 for v in losses(mixed, "pairs"))


def test_balancing_weights_favour_the_direction_that_changes_the_image_less(tiny_eg3d):
    G = tiny_eg3d["G_ema"]
    vector = torch.randn(1, 1, G.w_dim).expand(1, G.num_ws, -1)
    weights = balancing_weights(TeacherSampler(G), torch.cat([0.5 * vector, 2 * vector]))
    assert weights.shape == (2,) and weights.mean().item() == pytest.approx(1.0)
    assert weights[0] > 1.5 * weights[1]  # a quarter of the step: a smaller image change, a larger weight


def test_ema_ramp_forgets_the_initial_weights_of_a_short_run():
    # share of the initial weights left in the EMA after n steps: the product of the decays
    left = np.cumprod([ema_decay(step, 0.999) for step in range(20000)])
    assert left[599] < 0.02  # a flat 0.999 would leave 0.999 ** 600 = 55%
    assert ema_decay(0, 0.999) == 0.1 and ema_decay(100000, 0.999) == 0.999
    assert ema_decay(50, 0.5) == 0.5  # a low cap is reached early


def test_pcgan_mode_trains_without_the_teacher(teacher_file, real_folder, tiny_eg3d, tmp_path):
    out = tmp_path / "run"
    argv = ["--teacher", str(teacher_file), "--out", str(out), "--mode", "pcgan", "--real", str(real_folder),
            "--batch", "2", "--steps", "2", "--log-every", "1", "--sample-every", "0"]
    assert main(argv) == 0
    records = [r for r in read_log(out) if "g_loss" in r]
    assert len(records) == 2 and all("l1" not in r and "d_loss" in r for r in records)
    student = checkpoints.load_generator(out / "student.safetensors")
    teacher_fc0 = tiny_eg3d["G_ema"].backbone.mapping.fc0.weight
    assert not torch.equal(student.mapping_network.fc0.weight, teacher_fc0)  # --init fresh: nothing from the teacher


def test_bad_dataset_folders_are_clear_errors(tmp_path):
    good = write_real_folder(tmp_path / "good", n=2)
    assert len(RealImages(good, 64)) == 2 and RealImages(good, 64).batch([1])[0].shape == (1, 3, 64, 64)
    cases = {
        "missing": (lambda d: None, "no such folder"),
        "nojson": (lambda d: d.mkdir(), "no dataset.json"),
        "badjson": (lambda d: (d.mkdir(), (d / "dataset.json").write_text("{")), "not a JSON object"),
        "short": (lambda d: (d.mkdir(), (d / "dataset.json").write_text('{"labels": [["a.png", [0, 1]]]}')),
                  r"labels\[0\] is not \[filename, \[25 numbers\]\]"),
        "noimage": (lambda d: (d.mkdir(), (d / "dataset.json").write_text(json.dumps(
            {"labels": [["a.png", [0.0] * 25]]}))), "names a.png, which is not in"),
        "notimage": (lambda d: (d.mkdir(), (d / "a.png").write_text("text"), (d / "dataset.json").write_text(
            json.dumps({"labels": [["a.png", [0.0] * 25]]}))), "cannot read the image"),
    }
    for name, (make, message) in cases.items():
        make(tmp_path / name)
        with pytest.raises(DatasetError, match=message):
            RealImages(tmp_path / name, 64)


def test_cli_reports_user_errors_in_one_line(teacher_file, tmp_path, capsys):
    base = ["--teacher", str(teacher_file), "--out", str(tmp_path / "run")]
    cases = [(["--mode", "pcgan"], "give --real FOLDER"),
             (["--stage", "1", "--real", str(tmp_path)], "stage 1 learns from the teacher only"),
             (["--stage", "2", "--real", str(tmp_path / "nothing")], "no such folder"),
             (["--stage", "2", "--real-ratio", "0", "--batch", "6"], "minibatch-std group size 4"),
             (["--student", str(teacher_file), "--warm-start", str(teacher_file)], "not both"),
             (["--edit-pairs", str(tmp_path), "--batch", "1"], "needs --batch 2"),
             (["--edit-pairs", str(tmp_path), "--pair-mix", "--pair-balance"], "give one"),
             (["--edit-pairs", str(tmp_path)], "no direction files"),
             (["--edit-pairs", str(teacher_file)], "refused without reading it")]
    for options, message in cases:
        assert main(base + options) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1]


def test_warm_start_takes_an_earlier_teachers_student_into_the_new_w_space(teacher_file, tiny_eg3d, tmp_path,
                                                                           capsys):
    refitted = copy.deepcopy(tiny_eg3d["G_ema"])  # the teacher after further fitting: its mapping moved
    with torch.no_grad():
        refitted.backbone.mapping.fc0.weight.add_(0.1)
    new_teacher = checkpoints.save_model(tmp_path / "refitted.safetensors", {"G_ema": refitted, "D": tiny_eg3d["D"]})
    quick = ["--stage", "1", "--batch", "1", "--steps", "1", "--lpips-weight", "0", "--sample-every", "0"]
    assert main(["--teacher", str(teacher_file), "--out", str(tmp_path / "old"), *quick]) == 0
    old_student = tmp_path / "old" / "student.safetensors"
    assert main(["--teacher", str(new_teacher), "--out", str(tmp_path / "bad"), "--student", str(old_student),
                 *quick]) == 2
    assert "--warm-start starts from a student of an earlier" in capsys.readouterr().err
    assert main(["--teacher", str(new_teacher), "--out", str(tmp_path / "new"), "--warm-start", str(old_student),
                 *quick]) == 0
    new, old = (checkpoints.load_generator(p) for p in (tmp_path / "new" / "student.safetensors", old_student))
    fresh = Student.from_teacher(refitted)  # the default width, as the runs above
    for key, value in refitted.backbone.mapping.state_dict().items():
        assert torch.equal(new.mapping_network.state_dict()[key], value), key
    synthesis = {k: v for k, v in new.state_dict().items() if not k.startswith("mapping_network")}

    def distance(model):
        return sum(float((model.state_dict()[k] - v).abs().sum()) for k, v in synthesis.items())
    assert distance(old) < 0.1 * distance(fresh)  # one step away from the old student, far from a new one
