"""The demo teacher's fitting recipe on its tiny configuration: it learns, resumes exactly (also after kill -9 and a
damaged newest state), exports."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from editkit.cameras import frontal_label
from editkit.checkpoints import load_generator
from training import fit_teacher
from editkit.checkpoints import read_config, save_model, sha256_file
from editkit.errors import EditkitError
from editkit.models.eg3d.layers import EG3DError
from editkit.metrics.image import psnr
from training.fit_teacher import (CONFIGS, DEFAULTS, GroundTruth, build_teacher, evaluate, evaluation_set,
                                  init_weights, run, settings_for)
from training.state import load_latest_state, state_files
from training.synthetic.head_model import EXPRESSION_UNITS, HeadParams
from training.synthetic.latent import (BLINK, LATENT_SIZE, RARE_EXPRESSIONS, SPARSE, SPARSE_UNITS,
                                       emphasise_rare_expressions, params_from_z)

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TINY = {**DEFAULTS, "config": "tiny", "lpips": "none", "lr": 3e-3, "batch": 2}


def test_a_few_steps_raise_held_out_psnr(tmp_path):
    torch.manual_seed(TINY["seed"])  # run() seeds the same way, so this is the run's starting point
    start = build_teacher(CONFIGS["tiny"])
    data = evaluation_set(GroundTruth(128, 16), heads=2)
    before = evaluate(start, data)
    assert evaluate(start, data) == before  # the same ray offsets each time
    after = run(tmp_path / "run", TINY, max_steps=12, eval_heads=2)
    assert after["psnr"] > before["psnr"] + 1.0, (before, after)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 12


def test_a_low_resolution_start_renders_small_then_the_configs_size(tmp_path):
    result = run(tmp_path / "run", {**TINY, "low_res_steps": 2, "low_res": 8}, max_steps=4, eval_heads=1, log_every=1)
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["resolution"] for r in steps if "resolution" in r] == [8, 8, 16, 16]
    assert all(math.isfinite(r["raw"]) and math.isfinite(r["depth"]) for r in steps if "raw" in r)
    assert math.isfinite(result["psnr"])  # evaluated at the config's size (the EMA copy keeps it)
    truth = GroundTruth(128, 16)(torch.randn(1, LATENT_SIZE), frontal_label().float(), 8)
    assert truth["image_raw"].shape[-1] == truth["depth"].shape[-1] == 8 and truth["image"].shape[-1] == 128
    with pytest.raises(SystemExit, match="--low-res 48 must divide the output size"):
        settings_for(tmp_path / "bad", {"config": "tiny", "low_res_steps": 10, "low_res": 48})
    assert not (tmp_path / "bad" / "settings.json").exists()


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
    run(tmp_path / "run", {**TINY, "lr": 1e-3}, max_steps=2, eval_heads=1)  # resumed at a lower learning rate
    run(tmp_path / "run", {**TINY, "lr": 1e-3}, max_steps=3, eval_heads=1)  # resumed at the same rates
    out = fit_teacher.export(tmp_path / "run", tmp_path / "teacher.safetensors")
    G = load_generator(out)
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["provenance"]["steps"] == 3 and "psnr" in config["provenance"]["metrics"]
    rates = {key: TINY[key] for key in fit_teacher.ADJUSTABLE if key != "lr"}
    assert config["provenance"]["rates"] == [{"from_step": 0, "lr": 3e-3, **rates},
                                             {"from_step": 1, "lr": 1e-3, **rates}]
    for tensor in (G.plane_offset, G.plane_basis):  # learned, saved and loaded
        assert tensor is not None and tensor.abs().max() > 0
    assert set(G.mix_caps) == {"plane_basis"} and G.mix_caps["plane_basis"] > 0  # measured at export, loaded
    assert "init_from" not in config["provenance"]
    run(tmp_path / "continued", TINY, max_steps=1, eval_heads=1, init_from=out)
    again = fit_teacher.export(tmp_path / "continued", tmp_path / "continued.safetensors", half=True)
    assert read_config(again)["provenance"]["init_from"] == {"path": str(out), "sha256": sha256_file(out)}
    assert read_config(again)["provenance"]["stored_as"] == "float16"
    run(tmp_path / "from-half", TINY, max_steps=1, eval_heads=1, init_from=again)  # float16 weights start a run
    ws = G.mapping(torch.randn(1, G.z_dim), torch.zeros(1, 25))
    image = G.synthesis(ws, frontal_label().float())["image"]
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all()


def assert_same_renders(G, reference, ws, **tolerance):
    """G renders ws from the front as `reference` does: image, raw image and depth, same ray offsets."""
    label = frontal_label().float().repeat(len(ws), 1)
    renders = []
    for model in (G, reference):
        torch.manual_seed(1)  # the renderer jitters its samples along each ray
        renders.append(model.synthesis(ws, label, noise_mode="const"))
    for key in ("image", "image_raw", "image_depth"):
        torch.testing.assert_close(renders[0][key], renders[1][key], **tolerance)


def test_a_teacher_without_plane_offset_and_basis_starts_a_run_with_them_and_renders_the_same(tmp_path):
    torch.manual_seed(0)
    plain = build_teacher({**CONFIGS["tiny"], "plane_offset": False, "plane_basis": 0}).eval()
    path = save_model(tmp_path / "plain.safetensors", {"G": plain})
    G = build_teacher(CONFIGS["tiny"]).eval()
    init_weights(G, load_generator(path))
    assert G.plane_offset.abs().max() == 0 and G.plane_basis.abs().max() == 0
    ws = G.mapping(torch.randn(2, G.z_dim), torch.zeros(2, 25))
    assert_same_renders(G, plain, ws)
    with torch.no_grad():
        G.plane_offset.normal_()
    torch.testing.assert_close(G.planes(ws, noise_mode="const") - plain.planes(ws, noise_mode="const"),
                               G.plane_offset.expand(2, -1, -1, -1, -1))
    with torch.no_grad():  # a basis tensor of ones adds its mixing weight (per head) everywhere
        G.plane_offset.zero_()
        G.plane_basis[2] = 1
    mix = G.plane_basis_weights(ws.mean(1))[:, 2]
    assert mix[0] != mix[1]
    torch.testing.assert_close(G.planes(ws, noise_mode="const") - plain.planes(ws, noise_mode="const"),
                               mix.view(2, 1, 1, 1, 1).expand(-1, 3, 32, 32, 32))
    narrow = build_teacher({**CONFIGS["tiny"], "channel_max": 8})
    try:
        init_weights(narrow, load_generator(path))
        raise AssertionError("a teacher of a wider backbone was squeezed into a narrower one")
    except EditkitError as e:
        assert "does not match this config" in str(e)


def test_a_wider_backbone_starts_from_a_teacher_and_renders_what_it_rendered(tmp_path):
    torch.manual_seed(0)
    teacher = build_teacher(CONFIGS["tiny"]).eval()
    with torch.no_grad():  # a fitted teacher: offset, basis and biases are not zero
        for name, tensor in teacher.named_parameters():
            if name.endswith("bias") or name in ("plane_offset", "plane_basis"):
                tensor.normal_(0, 0.2)
    path = save_model(tmp_path / "teacher.safetensors", {"G": teacher})
    wide = build_teacher({**CONFIGS["tiny"], "channel_max": 32, "plane_basis": 6})
    assert wide.backbone.synthesis.b4.conv1.weight.shape[:2] == (32, 32)  # the tiny config has 16 at 4-16 px
    init_weights(wide, load_generator(path))
    wide.eval()
    ws = teacher.mapping(torch.randn(2, teacher.z_dim), torch.zeros(2, 25))
    assert_same_renders(wide, teacher, ws, atol=2e-5, rtol=1e-4)
    wide.train()
    out = wide.synthesis(ws, frontal_label().float().repeat(2, 1))
    out["image"].square().mean().backward()
    weight = wide.backbone.synthesis.b8.conv0.weight
    assert weight.grad[:16, 16:].abs().sum() > 0  # the zeroed block learns from the first step


def test_a_run_started_before_a_setting_existed_resumes_with_its_default(tmp_path):
    old = {**{k: v for k, v in DEFAULTS.items() if k != "offset_lr"}, "config": "demo"}
    (tmp_path / "settings.json").write_text(json.dumps(old))
    settings = settings_for(tmp_path, {"offset_lr": None, "lr": 5e-4})
    assert settings["config"] == "demo" and settings["offset_lr"] == DEFAULTS["offset_lr"]
    assert settings["lr"] == 5e-4


def test_a_resume_at_a_lower_rate_is_kept_by_the_next_plain_resume(tmp_path):
    settings_for(tmp_path, {**{k: None for k in DEFAULTS}, "config": "tiny"})  # a new run at the default rates
    settings_for(tmp_path, {**{k: None for k in DEFAULTS}, "lr": 3e-4, "basis_lr": 6e-3, "mse_weight": 32.0})
    plain = settings_for(tmp_path, {k: None for k in DEFAULTS})
    assert (plain["config"], plain["lr"], plain["basis_lr"]) == ("tiny", 3e-4, 6e-3)
    assert plain["offset_lr"] == DEFAULTS["offset_lr"]
    assert plain["mse_weight"] == 32.0  # the squared-error weight, too, may be raised when a run resumes
    raised = settings_for(tmp_path, {**{k: None for k in DEFAULTS}, "raw_eye_weight": 8.0})
    assert raised["raw_eye_weight"] == 8.0 and raised["lr"] == 3e-4  # and the raw image's eye term turned on


FIT = """
import sys
from pathlib import Path
from training.fit_teacher import DEFAULTS, run
settings = {**DEFAULTS, "config": "tiny", "lpips": "none", "lr": 3e-3, "batch": 2}
run(Path(sys.argv[1]), settings, max_steps=int(sys.argv[2]), checkpoint_minutes=0, eval_heads=1, threads=1)
"""


def fit_process(run_dir, max_steps) -> subprocess.Popen:
    """The tiny fit in its own process (one thread), saving its state after every step; output in proc.stdout."""
    return subprocess.Popen([sys.executable, "-c", FIT, str(run_dir), str(max_steps)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_9_and_a_damaged_newest_state_then_resume_gives_the_same_weights(tmp_path):
    straight = fit_process(tmp_path / "straight", 4)
    killed = fit_process(tmp_path / "killed", 1000)
    deadline = time.monotonic() + 120
    while len(state_files(tmp_path / "killed")) < 2 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert killed.poll() is None, killed.communicate()[0][-2000:]
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    newest = state_files(tmp_path / "killed")[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # damaged too: the resume falls back to the state before it
    resumed = fit_process(tmp_path / "killed", 4)
    outputs = [proc.communicate(timeout=300)[0] for proc in (straight, resumed)]
    assert straight.returncode == resumed.returncode == 0, outputs
    assert f"skipping unreadable training state {newest.name}" in outputs[1]
    a, b = (torch.load(state_files(tmp_path / name)[0], weights_only=True) for name in ("straight", "killed"))
    assert a["step"] == b["step"] == 4
    for key, value in a["G"].items():
        torch.testing.assert_close(b["G"][key], value, rtol=0, atol=1e-6, msg=key)


def test_feature_weights_cover_where_the_truths_expressions_change():
    truth = GroundTruth(128, 16)
    data = evaluation_set(truth, heads=2, probe_heads=2)
    assert data["features"].shape == (10, 1, 128, 128) and data["features"].amax() <= 1
    assert 0.03 < data["features"].mean() < 0.3  # blobs over chin, brows, eyes, nose, mouth; not the whole face
    shape = (len(fit_teacher.EXPRESSION_PROBES), 2, 2, -1, 128, 128)  # probe, low/high, head, channel
    probes = truth(data["probe_z"], data["probe_labels"])
    torch.testing.assert_close(probes["image"], data["probe_image"])
    change = (probes["image"].view(shape)[:, 1] - probes["image"].view(shape)[:, 0]).abs().sum(2)
    around_features = probes["features"].view(shape)[:, 1, :, 0] > 0.1
    inside = (change * around_features).sum((-2, -1)) / change.sum((-2, -1))
    assert (inside > 0.65).all(), inside  # expressions change the image around the landmarks (gaze least, 0.68)
    assert data["eyes"].mean() < data["features"].mean() / 3  # the eyes only
    blink = [name for name, _ in fit_teacher.EXPRESSION_PROBES].index("eyes_closed")
    around_eyes = probes["eyes"].view(shape)[blink, 1, :, 0] > 0.1
    assert ((change[blink] * around_eyes).sum() / change[blink].sum()) > 0.7  # a blink changes the eyes


def test_expression_response_is_one_for_the_truth_and_zero_for_a_generator_that_ignores_it():
    probes = len(fit_teacher.EXPRESSION_PROBES)
    truth = torch.randn(probes * 2 * 3, 3, 8, 8)
    follows = fit_teacher.expression_response(truth, truth)
    assert all(v == {"cosine": 1.0, "size": 1.0} for v in follows.values()), follows
    frozen = truth.view(probes, 2, 3, 3, 8, 8)[:, :1].expand(-1, 2, -1, -1, -1, -1).reshape(truth.shape)
    ignores = fit_teacher.expression_response(frozen, truth)
    assert all(v == {"cosine": 0.0, "size": 0.0} for v in ignores.values()), ignores


def test_pairs_differ_only_in_expression_and_their_loss_terms_train():
    settings = {**TINY, "batch": 4, "pair_weight": 1.0, "outline_weight": 1.0, "eye_weight": 1.0, "mse_weight": 1.0,
                "raw_eye_weight": 1.0}
    z, labels = fit_teacher.sample_batch(torch.Generator().manual_seed(0), settings)
    expression = fit_teacher.EXPRESSION_LATENTS
    others = torch.ones(z.shape[1], dtype=torch.bool)
    others[expression] = False
    assert torch.equal(z[:2, others], z[2:, others]) and torch.equal(labels[:2], labels[2:])
    assert (z[:2, expression] != z[2:, expression]).all()
    torch.manual_seed(0)
    G = build_teacher(CONFIGS["tiny"])
    truth = GroundTruth(128, 16)(z, labels)
    terms = fit_teacher.fit_losses(G, None, truth, z, labels, settings, torch.Generator().manual_seed(1), step=0)
    assert terms["pairs"] > 0 and terms["outline"] > 0 and terms["eyes"] > 0 and terms["raw_eyes"] > 0
    assert terms["mse"] >= terms["image"] ** 2 > 0  # mean squared error >= (mean absolute error)^2
    for name in ("pairs", "raw_eyes"):  # the expression change, and the eyes in the raw image, reach the plane basis
        G.zero_grad()
        terms[name].backward(retain_graph=True)
        assert G.plane_basis.grad.abs().sum() > 0, name


def test_emphasis_makes_each_picked_head_show_one_rare_expression():
    z = torch.randn(300, LATENT_SIZE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(emphasise_rare_expressions(z, 0.0, torch.Generator()), z)
    emphasised = emphasise_rare_expressions(z, 1.0, torch.Generator().manual_seed(1))
    changed = (emphasised != z).nonzero()
    assert changed[:, 0].tolist() == list(range(len(z)))  # one latent per head
    assert set(changed[:, 1].tolist()) == {latent for latent, _ in RARE_EXPRESSIONS.values()}  # all, none else
    units = {BLINK: "blink_l", **{SPARSE + k: name for k, (name, _, _) in enumerate(SPARSE_UNITS)}}
    shown = params_from_z(emphasised.numpy())[:, HeadParams.expression]
    for head, latent in changed.tolist():
        assert shown[head, list(EXPRESSION_UNITS).index(units[latent])] > 0, (head, units[latent])
    before = params_from_z(z.numpy())[:, HeadParams.expression]
    assert (before[:, list(EXPRESSION_UNITS).index("blink_l")] > 0).mean() < 0.15  # rare without the emphasis
    chosen = emphasise_rare_expressions(z, 1.0, torch.Generator().manual_seed(1), names=["eyes_closed", "brow_raise"])
    assert set((chosen != z).nonzero()[:, 1].tolist()) == {BLINK, SPARSE + 1}  # only the named ones


def test_outline_marks_the_pixels_near_the_masks_edge():
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., 5:15, 5:15] = 1
    outline = fit_teacher.outline_map(mask, pixels=2)
    across = outline[0, 0, 10].tolist()  # across the square's middle
    assert across == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]


def test_silhouette_finds_the_error_at_the_outline_and_a_head_drawn_too_large():
    truth = GroundTruth(128, 64)(torch.randn(2, LATENT_SIZE, generator=torch.Generator().manual_seed(3)),
                                 frontal_label().repeat(2, 1))
    exact = fit_teacher.silhouette({"image": truth["image"], "image_opacity": truth["coverage"]}, truth)
    assert torch.allclose(exact["silhouette_size"], torch.ones(2))
    blurred = torch.nn.functional.avg_pool2d(truth["image"], 3, 1, 1, count_include_pad=False)
    grown = torch.nn.functional.max_pool2d(truth["coverage"], 3, 1, 1)  # one pixel wider all round
    measured = fit_teacher.silhouette({"image": blurred, "image_opacity": grown}, truth)
    assert (measured["outline_psnr"] < psnr(blurred, truth["image"]) - 5).all()  # blur hurts the edge
    assert (measured["silhouette_size"] > 1.05).all()
    assert "silhouette_size" not in fit_teacher.silhouette({"image": blurred}, truth)  # a student draws no opacity


def test_the_plane_basis_leaves_the_average_head_alone():
    torch.manual_seed(0)
    G = build_teacher(CONFIGS["tiny"]).eval()
    with torch.no_grad():
        G.plane_basis.normal_()
        G.w_avg.normal_()
        average = G.w_avg[None, None].expand(1, G.num_ws, -1)
        heads = torch.cat([average, average + torch.randn_like(average)])
        with_basis = G.planes(heads, noise_mode="const")
        basis, G.plane_basis = G.plane_basis, None
        without = G.planes(heads, noise_mode="const")
        G.plane_basis = basis
    torch.testing.assert_close(with_basis[0], without[0])  # the average head: the offset only
    assert (with_basis[1] - without[1]).abs().mean() > 0.1  # another head: its own detail


def test_mix_caps_leave_the_fitted_latents_alone_and_hold_far_ones_back():
    torch.manual_seed(0)
    G = build_teacher(CONFIGS["tiny-detail"]).eval()
    with torch.no_grad():
        G.plane_basis.normal_()
        for basis in G.detail_basis:
            basis.normal_()
    settings = {**TINY, "config": "tiny-detail"}
    caps = fit_teacher.mix_caps(G, settings, samples=200, batch=50)
    assert set(caps) == {"plane_basis", "detail_basis"} and all(cap > 0 for cap in caps.values())
    z, labels = fit_teacher.sample_batch(torch.Generator().manual_seed(settings["seed"]), {**settings, "batch": 50})
    fitted = G.mapping(z, labels.float())  # the first latents the caps were measured on
    far = G.w_avg + 20 * (fitted - G.w_avg)  # a W+ latent far off the mapping's manifold
    with torch.no_grad():
        free = {name: G.planes(ws, noise_mode="const") for name, ws in (("fitted", fitted), ("far", far))}
        G.mix_caps = caps
        for name in caps:
            torch.testing.assert_close(G.mix(name, far).norm(dim=1), torch.full((50,), caps[name]))
        torch.testing.assert_close(G.planes(fitted, noise_mode="const"), free["fitted"], rtol=0, atol=0)
        capped = G.planes(far, noise_mode="const")
    assert torch.isfinite(capped).all() and (capped - free["far"]).abs().mean() > 0.1
    assert fit_teacher.mix_caps(build_teacher({**CONFIGS["tiny"], "plane_basis": 0}), settings, samples=10) is None


@pytest.mark.parametrize("train", ["detail", "detail-sr"])
def test_a_detail_stage_trains_only_the_detail_and_changes_the_planes_only_inside_its_boxes(tmp_path, train):
    torch.manual_seed(0)
    teacher = build_teacher(CONFIGS["tiny"]).eval()
    path = save_model(tmp_path / "teacher.safetensors", {"G": teacher})
    settings = {**TINY, "config": "tiny-detail", "train": train, "emphasise": "upper-face", "pair_weight": 4.0,
                "pair_emphasis": 1.0, "detail_lr": 0.05}
    run(tmp_path / "run", settings, max_steps=3, eval_heads=1, init_from=path)
    G = build_teacher(CONFIGS["tiny-detail"]).eval()
    G.load_state_dict(load_latest_state(tmp_path / "run")["G"])
    fitted = dict(G.named_parameters())
    upsampler_changed = []
    for name, value in teacher.state_dict().items():  # the rest of the teacher, w_avg included, is left as it was
        if train == "detail-sr" and name.startswith("superresolution."):
            upsampler_changed.append(not torch.equal(G.state_dict()[name], value))
        else:
            torch.testing.assert_close(G.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert any(upsampler_changed) == (train == "detail-sr")
    assert all(fitted[f"detail_basis.{k}"].abs().sum() > 0 for k in range(3))
    ws = teacher.mapping(torch.randn(2, teacher.z_dim), torch.zeros(2, 25))
    change = (G.planes(ws, noise_mode="const") - teacher.planes(ws, noise_mode="const")).abs().sum((0, 2))
    inside = torch.zeros_like(change, dtype=torch.bool)
    for plane, (top, left, height, width) in enumerate(CONFIGS["tiny-detail"]["detail_windows"]):
        inside[plane, top:top + height, left:left + width] = True
    assert change[inside].sum() > 0 and change[~inside].sum() == 0
    average = G.w_avg[None, None].expand(1, G.num_ws, -1)
    torch.testing.assert_close(G.planes(average, noise_mode="const"), teacher.planes(average, noise_mode="const"))


@pytest.mark.parametrize("windows", [None, [[0, 0, 4, 4]] * 2, [[0, 0, 4, 4], [0, 0, 4, 4], [30, 0, 4, 4]]])
def test_detail_boxes_outside_the_planes_are_refused(windows):
    config = {**CONFIGS["tiny-detail"], "detail_windows": windows}
    with pytest.raises(EG3DError, match="detail_windows must be 3"):
        build_teacher(config)


@pytest.mark.parametrize("train", ["detail", "detail-sr"])
def test_a_detail_run_needs_a_config_with_a_detail_basis(tmp_path, train):
    with pytest.raises(SystemExit, match="needs a config with a detail basis"):
        settings_for(tmp_path, {**{k: None for k in DEFAULTS}, "config": "tiny", "train": train})
