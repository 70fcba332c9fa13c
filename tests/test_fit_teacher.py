"""The demo teacher's fitting recipe on its tiny configuration: it learns, resumes exactly, exports."""

import json

import torch

from editkit.cameras import frontal_label
from editkit.checkpoints import load_generator
from training import fit_teacher
from training.fit_teacher import CONFIGS, DEFAULTS, GroundTruth, build_teacher, evaluate, evaluation_set, run

TINY = {**DEFAULTS, "config": "tiny", "lpips": "none", "lr": 3e-3, "batch": 2}


def test_a_few_steps_raise_held_out_psnr(tmp_path):
    torch.manual_seed(TINY["seed"])  # run() seeds the same way, so this is the run's starting point
    start = build_teacher(CONFIGS["tiny"])
    before = evaluate(start, evaluation_set(GroundTruth(128, 16), heads=2))
    after = run(tmp_path / "run", TINY, max_steps=12, eval_heads=2)
    assert after["psnr"] > before["psnr"] + 1.0, (before, after)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 12


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    run(tmp_path / "straight", TINY, max_steps=4, eval_heads=1)
    run(tmp_path / "interrupted", TINY, max_steps=2, eval_heads=1)  # stops and saves at step 2
    run(tmp_path / "interrupted", TINY, max_steps=4, eval_heads=1)  # continues from the saved step
    a = torch.load(tmp_path / "straight" / "state-00000004.pt", weights_only=True)
    b = torch.load(tmp_path / "interrupted" / "state-00000004.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for key, value in a["G"].items():
        torch.testing.assert_close(b["G"][key], value, rtol=0, atol=1e-6, msg=key)


def test_export_loads_by_path_and_renders(tmp_path):
    run(tmp_path / "run", TINY, max_steps=1, eval_heads=1)
    out = fit_teacher.export(tmp_path / "run", tmp_path / "teacher.safetensors")
    G = load_generator(out)
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["provenance"]["steps"] == 1 and "psnr" in config["provenance"]["metrics"]
    ws = G.mapping(torch.randn(1, G.z_dim), torch.zeros(1, 25))
    image = G.synthesis(ws, frontal_label().float())["image"]
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all()
