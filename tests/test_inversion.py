"""W+ inversion through tiny random generators, and `editkit invert` end to end."""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_G_KWARGS
from PIL import Image

from editkit import cameras, checkpoints
from editkit.cli import main
from editkit.inversion import OUTPUT_FILES, Settings, invert, lr_schedule, render
from editkit.models.eg3d import TriPlaneGenerator
from editkit.models.student import Student

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def student():
    """A tiny convolutional generator (64 px) with the teacher's interface."""
    torch.manual_seed(0)
    return Student(z_dim=16, c_dim=25, w_dim=64, img_resolution=64, num_ws=8, mapping_kwargs=dict(num_layers=2),
                   channel_base=256, channel_max=32, pose_features=32).eval()


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A tiny EG3D teacher (128 px, 32 px tri-planes) saved in editkit's format."""
    kwargs = copy.deepcopy(TINY_G_KWARGS)
    kwargs["triplane_resolution"] = 32
    kwargs["rendering_kwargs"].update(depth_resolution=4, depth_resolution_importance=4)
    torch.manual_seed(0)
    G = TriPlaneGenerator(**kwargs)
    G.neural_rendering_resolution = 16
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return checkpoints.save_model(path, {"G_ema": G.eval()})


def sample(G, seed, label):
    """G's own image for a random latent, and that latent."""
    z = torch.randn(len(label), G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ws = G.mapping(z, cameras.frontal_label().expand(len(label), -1))
        return render(G, ws, label), ws


def test_lr_schedule_ramps_up_and_down():
    values = [lr_schedule(t, 0.05, 0.25) for t in np.linspace(0, 0.999, 200)]
    assert values[0] == 0 and max(values) == 1 and values[-1] < 0.01
    assert np.argmax(values) < 20 and all(v == 1 for v in values[20:140])


def test_inversion_of_own_sample_lowers_the_loss(student):
    """Two of the generator's own images, inverted together: both end far below where they started."""
    label = cameras.make_label([15.0, -10.0], [5.0, 0.0])
    target, _ = sample(student, 1, label)
    result = invert(student, target, label, Settings(steps=60, refine_camera=False), progress=False)
    assert result.ws.shape == (2, student.num_ws, student.w_dim) and result.ws.dtype == torch.float32
    assert result.history.shape == (60, 2)
    assert (result.history[-1] < 0.1 * result.history[0]).all(), result.history[[0, -1]]
    assert max(result.losses["lpips"]) < 0.05 and min(result.losses["psnr"]) > 16, result.losses
    assert torch.equal(result.label, label)  # no refinement asked for: the camera stays
    with torch.no_grad():
        again = render(student, result.ws, label)
    assert torch.allclose(again, result.image, atol=1e-5)  # the latent alone reproduces the reconstruction
    record = result.summary(1)
    json.dumps(record)
    assert record["camera"]["yaw"] == pytest.approx(-10, abs=1e-4) and record["settings"]["steps"] == 60


def test_mask_ignores_pixels_outside_the_photo(student):
    """Garbage where the mask is 0 changes nothing."""
    label = cameras.make_label(0.0, 0.0)
    target, _ = sample(student, 2, label)
    mask = torch.ones(1, 1, 64, 64)
    mask[..., :, :16] = 0
    spoiled = target.clone()
    spoiled[..., :, :16] = 1.0
    settings = Settings(steps=5, refine_camera=False)
    a = invert(student, target, label, settings, mask=mask, progress=False)
    b = invert(student, spoiled, label, settings, mask=mask, progress=False)
    assert torch.allclose(a.ws, b.ws, atol=1e-5)


def test_shared_weight_keeps_the_latent_near_w_avg(student):
    """A target drawn from far outside the mapping's latents: the penalty on the shared offset holds the latent in."""
    label = cameras.make_label(0.0, 0.0)
    _, ws = sample(student, 4, label)
    far = student.w_avg + 4 * (ws - student.w_avg)
    with torch.no_grad():
        target = render(student, far, label)

    def distance(weight):
        settings = Settings(steps=30, refine_camera=False, shared_weight=weight)
        result = invert(student, target, label, settings, progress=False)
        return float((result.ws.mean(1) - student.w_avg).norm())

    free, held = distance(0.0), distance(1.0)
    assert held < 0.5 * free, (held, free)


def test_pti_tunes_a_copy(student):
    label = cameras.make_label(20.0, 0.0)
    target, _ = sample(student, 3, label)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = invert(student, target, label, Settings(steps=10, pti=True, pti_steps=15), progress=False)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # G itself is untouched
    assert result.generator is not None and result.generator is not student
    assert result.losses["mse"][0] < result.losses["mse_before_pti"][0]
    assert result.timings["pti"] > 0


def test_cli_writes_exactly_the_promised_files(teacher_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("synthetic_00.png", "synthetic_05.png"):
        shutil.copy(EXAMPLES / name, photos / name)
    out = tmp_path / "out"
    args = ["invert", str(photos), "--out", str(out), "--model", str(teacher_file), "--steps", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("yaw") == 2 and str(out / "synthetic_05") in printed
    assert sorted(p.name for p in out.iterdir()) == ["synthetic_00", "synthetic_05"]
    num_ws = checkpoints.load_generator(teacher_file).num_ws
    for folder in out.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
        latent = np.load(folder / "latent.npy")
        assert latent.shape == (1, num_ws, 512) and latent.dtype == np.float32
        record = json.loads((folder / "latent.json").read_text())
        assert record["model"]["sha256"] == checkpoints.sha256_file(teacher_file)
        assert record["generator"] == "teacher" and record["source"].endswith(f"{folder.name}.png")
        assert len(record["camera"]["label"]) == 25 and set(record["losses"]) >= {"lpips", "mse", "psnr"}
        assert {"w_plus", "per_step", "align", "total"} <= set(record["timings"])
        assert Image.open(folder / "aligned.png").size == (128, 128)
        assert Image.open(folder / "compare.png").size == (5 * 128, 128)
    truth = json.loads((EXAMPLES / "synthetic_05.json").read_text())
    record = json.loads((out / "synthetic_05" / "latent.json").read_text())
    assert abs(record["camera"]["initial_yaw"] - truth["yaw"]) < 10

    stamp = (out / "synthetic_00" / "latent.npy").stat().st_mtime_ns
    assert main(args) == 2  # exists: refused before any work
    assert "already exists; use --force" in capsys.readouterr().err
    assert (out / "synthetic_00" / "latent.npy").stat().st_mtime_ns == stamp
    assert main(args[:1] + [str(photos / "synthetic_00.png")] + args[2:] + ["--force"]) == 0


def test_cli_inverted_latent_feeds_edit(teacher_file, tmp_path, capsys):
    """`editkit edit` reads what `editkit invert` wrote (one latent format, editkit.latents)."""
    out = tmp_path / "out"
    assert main(["invert", str(EXAMPLES / "synthetic_00.png"), "--out", str(out), "--model", str(teacher_file),
                 "--steps", "1"]) == 0
    direction = tmp_path / "published.npy"
    np.save(direction, np.ones((1, 512), np.float32))
    edited = tmp_path / "edited"
    assert main(["edit", str(out / "synthetic_00"), "--direction", str(direction), "--yaw", "20",
                 "--out", str(edited)]) == 0, capsys.readouterr().err
    record = json.loads((edited / "latent.json").read_text())
    assert record["camera"]["yaw"] == 20 and record["model"]["sha256"] == checkpoints.sha256_file(teacher_file)
    assert Image.open(edited / "edit.png").size == (128, 128)


def test_cli_photo_without_face_writes_nothing(teacher_file, tmp_path, capsys):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((160, 200, 3), 180, np.uint8)).save(blank)
    out = tmp_path / "out"
    assert main(["invert", str(EXAMPLES / "synthetic_00.png"), str(blank), "--out", str(out),
                 "--model", str(teacher_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"editkit: error: {blank}: no face found") and err.count("\n") == 1
    assert not out.exists()


def test_cli_without_a_registered_default_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDITKIT_CHECKPOINTS", str(tmp_path))
    (tmp_path / "registry.json").write_text('{"models": {}}')
    assert main(["invert", str(EXAMPLES / "synthetic_00.png"), "--out", str(tmp_path / "out")]) == 2
    assert "no 'demo-student' model in the registry yet; pass --model" in capsys.readouterr().err
    assert main(["invert", str(EXAMPLES / "synthetic_00.png"), "--out", str(tmp_path / "out"),
                 "--model", "nonexistent"]) == 2
    assert "unknown model 'nonexistent'" in capsys.readouterr().err
