"""Directions (supervised, SeFa, imported), conditional and layer-restricted edits, landmark scores, `editkit edit`."""

import copy
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_G_KWARGS
from official_pickle import call_pickle
from PIL import Image

from editkit import attributes, cameras, checkpoints
from editkit.cli import main
from editkit.editing.directions import (Direction, DirectionError, apply_edits, format_layers, load_direction,
                                        parse_layers, project_out, restrict, save_direction)
from editkit.editing.registry import register_direction
from editkit.editing.sefa import sefa, sefa_directions, style_affines
from editkit.editing.supervised import fit_direction, sample_latents
from editkit.errors import OutputExistsError
from editkit.latents import camera_record

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def G():
    """A tiny random EG3D generator with 32 px tri-planes (8 ws), fast enough to render in tests."""
    from editkit.models.eg3d import TriPlaneGenerator

    torch.manual_seed(0)
    G = TriPlaneGenerator(**copy.deepcopy(TINY_G_KWARGS), triplane_resolution=32).eval()
    G.neural_rendering_resolution = 16
    return G


def unit(rng, *shape):
    v = rng.standard_normal(shape).astype(np.float32)
    return v / np.linalg.norm(v)


def hidden_scores(ws, hidden, rng, noise=0.3):
    """Labels defined from w: the projection on a hidden direction plus noise."""
    projection = (ws[:, 0] - ws[:, 0].mean(0)) @ hidden
    return projection + noise * projection.std() * rng.standard_normal(len(projection))


# ------------------------------------------------------------------------------------------------- supervised


@pytest.mark.parametrize("method", ["svm", "logistic"])
def test_fitted_direction_separates_heldout_samples(G, method):
    rng = np.random.default_rng(1)
    hidden = unit(rng, G.w_dim)
    _, ws = sample_latents(G, 800, seed=0)
    direction = fit_direction(ws, hidden_scores(ws, hidden, rng), "hidden", method=method)
    assert direction.vector.shape == (1, G.w_dim) and direction.method == f"supervised-{method}"
    assert np.isclose(np.linalg.norm(direction.vector), 1, atol=1e-5)
    assert direction.accuracy > 0.9 and direction.data["heldout_correlation"] > 0.8

    # fresh samples the fit never saw: the projection on the direction ranks them like the hidden labels
    _, fresh = sample_latents(G, 400, seed=5)
    scores = hidden_scores(fresh, hidden, rng)
    projection = fresh[:, 0] @ direction.vector[0]
    top, bottom = projection[scores > np.quantile(scores, 0.75)], projection[scores < np.quantile(scores, 0.25)]
    assert np.mean(top[:, None] > bottom[None, :]) > 0.95
    assert np.corrcoef(projection, scores)[0, 1] > 0.8


def test_wplus_fit_binary_labels_and_unlabelled_samples(G):
    rng = np.random.default_rng(2)
    hidden = unit(rng, G.w_dim)
    _, ws = sample_latents(G, 600, seed=1)
    labels = (hidden_scores(ws, hidden, rng, noise=0.1) > 0).astype(float)
    labels[:50] = np.nan  # e.g. no face found: dropped
    direction = fit_direction(ws, labels, "hidden", space="w+", layers=[0, 1, 2, 3])
    assert direction.vector.shape == (G.num_ws, G.w_dim) and direction.layers == [0, 1, 2, 3]
    assert np.allclose(np.linalg.norm(direction.vector[:4], axis=1), 1, atol=1e-4)
    assert not direction.vector[4:].any()
    assert direction.accuracy > 0.9 and direction.data["labelled"] == 550
    with pytest.raises(DirectionError, match="nothing to separate"):
        fit_direction(ws, np.ones(len(ws)), "constant")


# ------------------------------------------------------------------------------------------------------- SeFa


def test_sefa_returns_orthonormal_eigen_directions(G):
    affines = style_affines(G)
    index = {name: i for name, i, _ in affines}
    # StyleGAN2's layout: each block's conv1 reads w_k, its ToRGB and the next block's conv0 read w_k+1
    assert index["b4.conv1.affine"] == 0 and index["b4.torgb.affine"] == 1 and index["b8.conv0.affine"] == 1
    assert index["b8.conv1.affine"] == 2 and sorted(set(index.values())) == list(range(G.num_ws))

    vectors, values, total = sefa(G, k=6)
    assert vectors.shape == (6, G.w_dim)
    assert np.allclose(vectors @ vectors.T, np.eye(6), atol=1e-5)
    assert np.all(np.diff(values) <= 0) and values.sum() <= total
    # the first component changes the (row-normalised) styles more than any random direction
    a = torch.cat([w / w.norm(dim=1, keepdim=True) for _, _, w in affines]).numpy()
    energy = lambda v: np.sum((a @ v.T) ** 2, axis=0)  # noqa: E731
    assert np.allclose(energy(vectors), values, rtol=1e-4)
    random = np.random.default_rng(0).standard_normal((200, G.w_dim))
    assert energy(random / np.linalg.norm(random, axis=1, keepdims=True)).max() < values[0]

    restricted = sefa_directions(G, k=2, layers=[0, 1])
    assert [d.attribute for d in restricted] == ["sefa_00", "sefa_01"]
    assert all(d.vector.shape == (G.num_ws, G.w_dim) and not d.vector[2:].any() for d in restricted)


# ---------------------------------------------------------------------------------------------- direction files


def test_direction_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    direction = Direction(unit(rng, 8, 16), "smile", "supervised-svm", model="m", model_sha256="ab",
                          layers=[0, 1], accuracy=0.93, data={"samples": 10})
    path = save_direction(tmp_path / "smile.npy", direction)
    assert np.load(path).shape == (1, 8, 16)
    assert json.loads(path.with_suffix(".json").read_text())["accuracy"] == 0.93
    loaded = load_direction(path, num_ws=8, w_dim=16)
    assert np.array_equal(loaded.vector, direction.vector) and loaded.metadata() == direction.metadata()
    with pytest.raises(OutputExistsError, match="already exists"):
        save_direction(path, direction)


@pytest.mark.parametrize("shape", [(1, 14, 512), (1, 512), (512,), (14, 512)])
def test_published_formats_load(tmp_path, shape):
    array = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "published.npy", array)
    direction = load_direction(tmp_path / "published.npy", num_ws=14, w_dim=512)
    assert direction.vector.dtype == np.float32
    assert direction.vector.shape == ((14, 512) if array.size == 14 * 512 else (1, 512))
    assert np.array_equal(direction.vector.reshape(-1), array.reshape(-1))
    assert direction.attribute == "published" and direction.method == "imported"


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 14, 512), np.float32) + 1, "is not a direction"),
    (np.ones((1, 1, 1, 512), np.float32), "is not a direction"),
    (np.ones((14, 256), np.float32), "w_dim 256"),
    (np.ones((13, 512), np.float32), "13 layers"),
    (np.ones((1, 512), np.int32), "not a float type"),
    (np.ones((1, 512), np.complex64), "not a float type"),
    (np.full((1, 512), np.nan, np.float32), "NaN"),
    (np.zeros((1, 512), np.float32), "all zeros"),
])
def test_malformed_direction_files_are_refused(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DirectionError, match=message):
        load_direction(tmp_path / "bad.npy", num_ws=14, w_dim=512)


class Payload:
    """Unpickling this runs `touch <sentinel>`."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _pickle_files(folder: Path, sentinel: Path) -> dict:
    """Files named .npy that would run the payload if loaded carelessly."""
    files = {"pickle protocol 0": folder / "raw0.npy", "pickle protocol 4": folder / "raw4.npy",
             "torch.save": folder / "torch.npy", "object array": folder / "object.npy",
             "truncated": folder / "truncated.npy"}
    files["pickle protocol 0"].write_bytes(call_pickle("os", "system", (f"touch {sentinel}",)))
    files["pickle protocol 4"].write_bytes(pickle.dumps(Payload(sentinel), protocol=4))
    torch.save({"direction": Payload(sentinel)}, files["torch.save"])
    np.save(files["object array"], np.array([Payload(sentinel)], dtype=object), allow_pickle=True)
    np.save(files["truncated"], np.ones((1, 512), np.float32))
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:200])
    return files


def test_pickles_under_npy_are_refused_and_never_run(tmp_path, capsys):
    sentinel = tmp_path / "payload_ran"
    expected = {"pickle protocol 0": "not a NumPy .npy file", "pickle protocol 4": "a Python pickle",
                "torch.save": "zip archive", "object array": "Object arrays", "truncated": "not a readable"}
    for kind, path in _pickle_files(tmp_path, sentinel).items():
        with pytest.raises(DirectionError, match=expected[kind]):
            load_direction(path, num_ws=14, w_dim=512)
        assert main(["directions", "import", str(path), "--out", str(tmp_path / "imported.npy")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"editkit: error: {path}") and err.count("\n") == 1
    assert not sentinel.exists() and not (tmp_path / "imported.npy").exists()


# ------------------------------------------------------------------------------------ layers and conditioning


def test_layers_conditioning_and_apply():
    assert parse_layers("0-2,5") == [0, 1, 2, 5] and format_layers([0, 1, 2, 5]) == "0-2,5"
    assert format_layers(None) == "all"
    for bad in ("7-3", "a", "0-20"):
        with pytest.raises(DirectionError):
            parse_layers(bad, num_ws=14)
    rng = np.random.default_rng(3)
    edit, keep = Direction(unit(rng, 1, 32), "smile", "t"), Direction(unit(rng, 1, 32), "id00", "t")
    conditioned = project_out(edit, [keep], num_ws=4)
    assert abs(float(conditioned.vector[0] @ keep.vector[0])) < 1e-6
    assert np.isclose(np.linalg.norm(conditioned.vector), 1, atol=1e-5)
    assert conditioned.data["conditioned_on"] == ["id00"]
    with pytest.raises(DirectionError, match="span"):
        project_out(keep, [keep], num_ws=4)
    keep_wplus = Direction(unit(rng, 4, 32), "id01", "t")
    both = project_out(restrict(edit, [1, 2], num_ws=4), [keep, keep_wplus], num_ws=4)
    assert both.vector.shape == (4, 32) and not both.vector[[0, 3]].any()  # the layer restriction survives
    assert np.abs(both.vector @ keep.vector[0]).max() < 1e-6
    assert np.abs(np.sum(both.vector * keep_wplus.vector, axis=1)).max() < 1e-6

    restricted = restrict(conditioned, [1, 2], num_ws=4)
    ws = torch.from_numpy(rng.standard_normal((2, 4, 32)).astype(np.float32))
    moved = apply_edits(ws, [(restricted, 2.0), (keep, -1.0)])
    expected = ws + torch.from_numpy(2.0 * restricted.vector - keep.vector)
    assert torch.allclose(moved, expected) and not restricted.vector[[0, 3]].any()
    # along the conditioned direction the projection on the kept one does not move
    ws_keep = torch.einsum("nld,d->nl", apply_edits(ws, [(conditioned, 3.0)]) - ws, torch.from_numpy(keep.vector[0]))
    assert ws_keep.abs().max() < 1e-5


# ------------------------------------------------------------------------------------------- landmark scores


def test_landmark_scores_are_invariant_and_move_with_the_face():
    lm = np.array(json.loads((EXAMPLES / "synthetic_00.json").read_text())["landmarks2d"], np.float64)
    scores = {name: attributes.score(name, lm) for name in attributes.SCORES}
    for name, value in scores.items():  # size and position of the face do not matter
        assert np.isclose(attributes.score(name, 2.5 * lm + 40), value)
    moved = lm.copy()
    moved[17:27, 1] -= 5  # brows up
    moved[65:68, 1] += 4  # lower inner lip down
    moved[[37, 38, 43, 44], 1] += 2  # upper lids down
    moved[48, 0] -= 3
    moved[54, 0] += 3  # mouth corners out
    assert attributes.brow_raise(moved) > scores["brow_raise"] and attributes.jaw_open(moved) > scores["jaw_open"]
    assert attributes.eyes_closed(moved) > scores["eyes_closed"] and attributes.smile(moved) > scores["smile"]
    assert np.allclose(attributes.smile(np.stack([lm, moved])), [scores["smile"], attributes.smile(moved)])
    with pytest.raises(attributes.EditkitError, match="known"):
        attributes.score("beard", lm)


def test_dlib_landmark_scores_rank_the_examples():
    """At the demo resolution (128 px), dlib's scores single out the smiling, open-mouthed and blinking examples."""
    found = {}
    for i in range(6):
        image = np.asarray(Image.open(EXAMPLES / f"synthetic_{i:02d}.png").convert("RGB").resize((128, 128),
                                                                                             Image.LANCZOS))
        landmarks = attributes.detect_landmarks(image)
        assert landmarks is not None and landmarks.shape == (68, 2)
        found[i] = {name: float(attributes.score(name, landmarks)) for name in ("smile", "jaw_open", "eyes_closed")}
    ranked = {name: sorted(found, key=lambda i: -found[i][name]) for name in ("smile", "jaw_open", "eyes_closed")}
    assert set(ranked["smile"][:2]) == {1, 3}  # smile 0.8 and 1.0
    assert ranked["jaw_open"][0] == 2  # jaw open 0.45
    assert ranked["eyes_closed"][0] == 4  # blink 1.0
    assert attributes.detect_landmarks(np.zeros((128, 128, 3), np.uint8)) is None


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def workspace(G, tmp_path, monkeypatch):
    """A checkpoints folder with G registered as 'tiny', shipped 'smile' and 'id00' directions, and a latent."""
    folder = tmp_path / "checkpoints"
    path = checkpoints.save_model(folder / "tiny.safetensors", {"G_ema": G})
    sha = checkpoints.sha256_file(path)
    entry = {"file": "tiny.safetensors", "sha256": sha, "kind": "teacher", "description": "tiny"}
    (folder / "registry.json").write_text(json.dumps({"models": {"tiny": entry}}))
    monkeypatch.setenv("EDITKIT_CHECKPOINTS", str(folder))
    rng = np.random.default_rng(4)
    for name in ("smile", "id00"):
        register_direction(Direction(unit(rng, 1, G.w_dim), name, "test"), "tiny", folder=folder / "directions")
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), cameras.frontal_label())
    latent = tmp_path / "photo"
    latent.mkdir()
    np.save(latent / "latent.npy", ws.numpy())
    meta = {"model": {"name": "tiny", "file": "tiny.safetensors", "sha256": sha}, "camera": camera_record(0.0, 0.0)}
    (latent / "latent.json").write_text(json.dumps(meta))
    np.save(tmp_path / "published.npy", unit(rng, 1, G.w_dim))
    return {"folder": folder, "latent": latent, "ws": ws, "tmp": tmp_path, "model": path}


def test_edit_cli_writes_the_promised_files(G, workspace, capsys):
    tmp, out = workspace["tmp"], workspace["tmp"] / "edited"
    args = ["edit", str(workspace["latent"]), "--attr", "smile", "--strength", "1.5",
            "--direction", str(tmp / "published.npy"), "--strength", "-0.5", "--yaw", "30", "--pitch", "-10",
            "--layers", "0-3", "--keep-identity", "id00", "--orbit", "--frames", "3", "--grid", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["edit.png", "grid.png", "latent.json", "latent.npy", "orbit.gif", "orbit.mp4"]
    assert Image.open(out / "edit.png").size == (128, 128)
    assert Image.open(out / "grid.png").size == (5 * 128, 5 * 128)
    assert Image.open(out / "orbit.gif").n_frames == 3
    assert (out / "orbit.mp4").read_bytes()[4:8] == b"ftyp"

    edited, meta = np.load(out / "latent.npy"), json.loads((out / "latent.json").read_text())
    delta = edited[0] - workspace["ws"].numpy()[0]
    identity = load_direction(workspace["folder"] / "directions/tiny/id00.npy").vector[0]
    assert np.abs(delta[4:]).max() == 0 and np.abs(delta[:4]).max() > 0.1  # only layers 0-3 moved
    assert np.abs(delta[:4] @ identity).max() < 1e-4  # identity direction kept
    assert meta["camera"]["yaw"] == 30 and meta["camera"]["pitch"] == -10 and meta["model"]["name"] == "tiny"
    assert [e["strength"] for e in meta["edits"]] == [1.5, -0.5] and meta["keep"] == ["id00"]
    assert np.allclose(meta["camera"]["label"], cameras.to_json(cameras.make_label(30, -10)))

    capsys.readouterr()
    assert main(args) == 2 and "already exists; use --force" in capsys.readouterr().err
    assert main(["edit", str(out), "--attr", "smile", "--out", str(out), "--force"]) == 0  # an edit of an edit
    assert sorted(os.listdir(out)) == ["edit.png", "latent.json", "latent.npy"]  # no orbit or grid of the old edit

    assert main(["directions", "list"]) == 0
    listed = capsys.readouterr().out
    assert "smile" in listed and "id00" in listed and "tiny/smile.npy" in listed


def test_edit_cli_errors_are_one_line(workspace, capsys):
    tmp = workspace["tmp"]
    cases = [
        (["--attr", "beard"], "no shipped direction 'beard' for model 'tiny'"),
        (["--attr", "smile", "--layers", "0-20"], "layers '0-20'"),
        ([], "nothing to edit"),
    ]
    for extra, message in cases:
        assert main(["edit", str(workspace["latent"]), *extra, "--out", str(tmp / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    meta = json.loads((workspace["latent"] / "latent.json").read_text())
    (workspace["latent"] / "latent.json").write_text(json.dumps({**meta, "model": {**meta["model"], "sha256": "0" * 64}}))
    assert main(["edit", str(workspace["latent"]), "--attr", "smile", "--out", str(tmp / "o")]) == 2
    assert "another version of model 'tiny'" in capsys.readouterr().err
    assert main(["edit", str(tmp / "nowhere"), "--attr", "smile", "--out", str(tmp / "o")]) == 2
    assert "no such latent file" in capsys.readouterr().err
    short = tmp / "short"  # a latent with fewer layers than the generator's
    short.mkdir()
    np.save(short / "latent.npy", workspace["ws"].numpy()[:, :2])
    (short / "latent.json").write_text(json.dumps(meta))
    assert main(["edit", str(short), "--attr", "smile", "--out", str(tmp / "o")]) == 2
    err = capsys.readouterr().err
    assert "latent shape (1, 2, " in err and "does not fit 'tiny'" in err and err.count("\n") == 1
    assert not (tmp / "o").exists()


def test_edit_renders_with_the_registered_pair(workspace, capsys):
    """A student's latent finds its teacher's shipped directions and can be rendered by the teacher."""
    folder, latent = workspace["folder"], workspace["latent"]
    registry = json.loads((folder / "registry.json").read_text())
    registry["models"]["tiny-student"] = {**registry["models"]["tiny"], "kind": "student", "teacher": "tiny"}
    (folder / "registry.json").write_text(json.dumps(registry))
    meta = json.loads((latent / "latent.json").read_text())
    (latent / "latent.json").write_text(json.dumps({**meta, "model": {**meta["model"], "name": "tiny-student"}}))
    out = workspace["tmp"] / "pair"
    assert main(["edit", str(latent), "--attr", "smile", "--generator", "teacher", "--out", str(out)]) == 0
    assert json.loads((out / "latent.json").read_text())["rendered_with"] == "tiny"
    assert main(["directions", "list", "--model", "tiny-student"]) == 0 and "smile" in capsys.readouterr().out
    (latent / "latent.json").write_text(json.dumps(meta))  # the teacher's latent: its student renders it
    assert main(["edit", str(latent), "--attr", "smile", "--generator", "student", "--out", str(out), "--force"]) == 0
    assert json.loads((out / "latent.json").read_text())["rendered_with"] == "tiny-student"


def test_directions_cli_sefa_import_and_fit(G, workspace, capsys):
    tmp, model = workspace["tmp"], str(workspace["model"])
    assert main(["directions", "sefa", "--model", model, "--k", "3", "--out", str(tmp / "sefa")]) == 0
    vectors = np.concatenate([load_direction(tmp / f"sefa/sefa_{i:02d}.npy").vector for i in range(3)])
    assert np.allclose(vectors @ vectors.T, np.eye(3), atol=1e-5)

    np.save(tmp / "pub14.npy", np.ones((1, 14, 512), np.float32))
    assert main(["directions", "import", str(tmp / "pub14.npy"), "--out", str(tmp / "a.npy")]) == 0
    assert load_direction(tmp / "a.npy").vector.shape == (14, 512)
    capsys.readouterr()
    assert main(["directions", "import", str(tmp / "pub14.npy"), "--model", "tiny", "--out", str(tmp / "b.npy")]) == 2
    assert f"has 14 layers, the generator has {G.num_ws}" in capsys.readouterr().err
    assert main(["directions", "import", str(tmp / "published.npy"), "--model", "tiny", "--attribute", "mine",
                 "--register"]) == 0
    assert load_direction(workspace["folder"] / "directions/tiny/mine.npy").model == "tiny"

    # a random generator draws no faces: the landmark-labelled fit says so instead of fitting noise
    assert main(["directions", "fit", "--model", "tiny", "--attr", "smile", "--n", "20", "--out",
                 str(tmp / "fit.npy")]) == 2
    assert "dlib found a face in only 0 of 20 samples" in capsys.readouterr().err
    assert not (tmp / "fit.npy").exists()
