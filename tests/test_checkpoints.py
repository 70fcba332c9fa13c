import copy
import json
import os
import pickle
import stat

import pytest
import torch
from official_pickle import call_pickle, write_official_pickle
from safetensors.torch import load_file, save_file

from editkit import checkpoints
from editkit.cameras import make_label
from editkit.errors import CheckpointError, OutputExistsError, UnsafePickleError
from editkit.io import atomic_write

# ------------------------------------------------------------------------------------------------ atomic writes


def test_atomic_write_refuses_existing_and_replaces_with_force(tmp_path):
    out = tmp_path / "a.txt"
    atomic_write(out, lambda tmp: tmp.write_text("one"))
    with pytest.raises(OutputExistsError, match="a.txt already exists"):
        atomic_write(out, lambda tmp: tmp.write_text("two"))
    atomic_write(out, lambda tmp: tmp.write_text("two"), force=True)
    assert out.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_leaves_old_file_and_no_temp_when_writer_fails(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")

    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(out, failing, force=True)
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# ------------------------------------------------------------------------------------------ the restricted unpickler


@pytest.mark.parametrize("module,name,make_args", [
    ("os", "system", lambda sentinel: (f"touch {sentinel}",)),
    ("builtins", "eval", lambda sentinel: (f"open({sentinel!r}, 'w').close()",)),
    ("subprocess", "Popen", lambda sentinel: (["touch", sentinel],)),
])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, module, name, make_args):
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(call_pickle(module, name, make_args(str(sentinel))))
    with pytest.raises(UnsafePickleError) as err:
        checkpoints.load_official_pickle(evil)
    assert str(err.value).startswith(f"{evil}: refusing global '{module}.{name}'")
    assert "\n" not in str(err.value)
    assert not sentinel.exists()


class Payload:
    """Pickles as a call to os.system (the global is written as `posix.system` on Linux)."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.sentinel}",)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Softplus())
        self.register_buffer("w_avg", torch.arange(4.0))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.neural_rendering_resolution = 32


def test_official_layout_is_read_as_inert_records(tmp_path):
    net = TinyNet()
    sentinel = tmp_path / "pwned"
    path = write_official_pickle(tmp_path / "net.pkl", {"G": net}, {"G": {"width": 4, "mapping": {"n": 2}}},
                                 {"resolution": 64}, module_src=f"import os\nos.system('touch {sentinel}')\n")
    data = checkpoints.safe_unpickle(path)
    record = data["G"]
    assert isinstance(record, checkpoints.PersistentObject) and record.class_name == "TinyNet"
    assert record.state["_init_kwargs"] == {"width": 4, "mapping": {"n": 2}}
    assert data["training_set_kwargs"] == {"resolution": 64}
    flat = checkpoints._flatten(record, "", {}, path)
    assert flat.keys() == net.state_dict().keys()  # non-persistent buffer left out, official key names
    assert all(torch.equal(flat[k], v) for k, v in net.state_dict().items())
    assert not sentinel.exists()  # module_src is hashed, never run
    with pytest.raises(CheckpointError, match="network class 'TinyNet' is not one editkit can load"):
        checkpoints.load_official_pickle(path)


def test_payload_nested_inside_a_network_is_refused(tmp_path):
    net = TinyNet()
    net.extra = Payload(tmp_path / "pwned")
    path = write_official_pickle(tmp_path / "net.pkl", {"G": net}, {"G": {}})
    with pytest.raises(UnsafePickleError, match=r"refusing global '(posix|os)\.system'"):
        checkpoints.safe_unpickle(path)
    assert not (tmp_path / "pwned").exists()


def test_payload_inside_a_storage_blob_is_refused(tmp_path):
    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (call_pickle("os", "system", (f"touch {tmp_path}/pwned",)),)

    path = tmp_path / "blob.pkl"
    path.write_bytes(pickle.dumps({"G": Storage()}, protocol=4))
    with pytest.raises(UnsafePickleError, match="refusing a tensor storage blob"):
        checkpoints.safe_unpickle(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_pickle_and_foreign_data_give_clear_errors(tmp_path):
    path = write_official_pickle(tmp_path / "net.pkl", {"G": TinyNet()}, {"G": {}})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="net.pkl: not a readable EG3D pickle"):
        checkpoints.safe_unpickle(path)
    other = tmp_path / "list.pkl"
    other.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="not an EG3D network pickle"):
        checkpoints.load_official_pickle(other)


# ------------------------------------------------------------------------------- official pickles -> our port


def assert_same_outputs(a, b):
    assert a.keys() == b.keys() and {"image", "image_raw", "image_depth"} <= a.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_pickle_loads_and_renders_like_the_source(official_pkl, tiny_eg3d, render, reference_render):
    path, sentinel = official_pkl
    loaded = checkpoints.load_official_pickle(path)
    assert not sentinel.exists()  # the embedded module source was never run
    for name in ("G", "G_ema", "D"):
        assert type(getattr(loaded, name)) is type(tiny_eg3d[name])
        assert_same_state(getattr(loaded, name), tiny_eg3d[name])
    assert loaded.G_ema.neural_rendering_resolution == 16 and loaded.G_ema.rendering_kwargs["depth_resolution"] == 6
    assert loaded.training_set_kwargs["resolution"] == 128
    assert_same_outputs(render(loaded.G_ema), reference_render)
    assert not loaded.G_ema.training
    generator = checkpoints.load_generator(path)  # prefers G_ema
    assert_same_state(generator, tiny_eg3d["G_ema"])
    assert_same_state(checkpoints.load_discriminator(path), tiny_eg3d["D"])


# --------------------------------------------------------------------------------------- our format: safetensors


@pytest.fixture
def saved(tiny_eg3d, tmp_path):
    """A checkpoint holding G_ema and D, in a fresh folder per test."""
    nets = {"G_ema": tiny_eg3d["G_ema"], "D": tiny_eg3d["D"]}
    return checkpoints.save_model(tmp_path / "tiny.safetensors", nets, {"data": "unit test"})


def test_save_load_round_trip(saved, tiny_eg3d, render, reference_render):
    config = json.loads(saved.with_suffix(".json").read_text())
    assert config["format"] == "editkit" and config["version"] == 1 and list(config["networks"]) == ["G_ema", "D"]
    assert config["networks"]["G_ema"]["attributes"]["neural_rendering_resolution"] == 16
    assert config["provenance"]["data"] == "unit test" and config["provenance"]["created"]
    assert all(k.startswith(("G_ema.", "D.")) for k in load_file(saved))
    nets = checkpoints.load_model(saved)
    assert_same_state(nets["G_ema"], tiny_eg3d["G_ema"])
    assert_same_state(nets["D"], tiny_eg3d["D"])
    assert_same_outputs(render(nets["G_ema"]), reference_render)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_weights_get_the_permissions_of_any_new_file(tiny_eg3d, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = checkpoints.save_model(tmp_path / "G.safetensors", {"G_ema": tiny_eg3d["G_ema"]})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(path.with_suffix(".json").stat().st_mode) == mode


def test_half_precision_halves_the_file_and_loads_as_float32(saved, tiny_eg3d, render, reference_render, tmp_path):
    half = checkpoints.save_model(tmp_path / "half.safetensors", {"G_ema": tiny_eg3d["G_ema"]}, half=True)
    stored = load_file(half)
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    assert json.loads(half.with_suffix(".json").read_text())["provenance"]["stored_as"] == "float16"
    full = checkpoints.save_model(tmp_path / "full.safetensors", {"G_ema": tiny_eg3d["G_ema"]})
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.55
    G = checkpoints.load_generator(half)
    assert all(p.dtype == torch.float32 for p in G.parameters())
    rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in tiny_eg3d["G_ema"].state_dict().items()}
    assert all(torch.equal(v, rounded[k]) for k, v in G.state_dict().items())
    image, reference = render(G)["image"], reference_render["image"]
    assert not torch.equal(image, reference) and (image - reference).abs().max() < 0.02


def test_half_precision_refuses_values_beyond_float16(tiny_eg3d, tmp_path):
    G = copy.deepcopy(tiny_eg3d["G_ema"])
    with torch.no_grad():
        G.decoder.net[0].bias[0] = 1e6
    with pytest.raises(CheckpointError, match="beyond float16's range"):
        checkpoints.save_model(tmp_path / "big.safetensors", {"G": G}, half=True)
    assert not list(tmp_path.iterdir())


def test_overwrite_is_refused_unless_asked(saved, tiny_eg3d):
    with pytest.raises(OutputExistsError, match="tiny.safetensors already exists"):
        checkpoints.save_model(saved, {"G": tiny_eg3d["G"]})
    saved.unlink()  # the JSON alone still blocks
    with pytest.raises(OutputExistsError, match="tiny.json already exists"):
        checkpoints.save_model(saved, {"G": tiny_eg3d["G"]})
    checkpoints.save_model(saved, {"G": tiny_eg3d["G"]}, overwrite=True)
    assert list(checkpoints.load_model(saved)) == ["G"]
    assert sorted(p.name for p in saved.parent.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_wrong_shape_and_missing_or_unexpected_keys(saved):
    tensors = load_file(saved)
    tensors["D.b4.fc.weight"] = torch.zeros(3, 3)
    del tensors["G_ema.decoder.net.0.bias"]
    tensors["G_ema.decoder.extra"] = torch.zeros(1)
    save_file(tensors, saved)
    with pytest.raises(CheckpointError) as err:
        checkpoints.load_model(saved)
    message = str(err.value)
    assert message.startswith(f"{saved} [G_ema]: weights do not fit TriPlaneGenerator")
    assert "missing keys: decoder.net.0.bias" in message and "unexpected keys: decoder.extra" in message
    del tensors["G_ema.decoder.extra"]
    tensors["G_ema.decoder.net.0.bias"] = torch.zeros(64)
    save_file(tensors, saved)
    with pytest.raises(CheckpointError, match=r"\[D\]: weights do not fit .*wrong shapes: b4\.fc\.weight \(3, 3\)"):
        checkpoints.load_model(saved)


def test_loaders_build_only_the_network_asked_for(saved, tiny_eg3d, tmp_path):
    assert_same_state(checkpoints.load_discriminator(saved), tiny_eg3d["D"])
    only_d = checkpoints.save_model(tmp_path / "d.safetensors", {"D": tiny_eg3d["D"]})
    with pytest.raises(CheckpointError, match=r"d.safetensors: holds no G_ema or G \(it has: D\)"):
        checkpoints.load_generator(only_d)


def test_truncated_safetensors_and_missing_json(saved):
    saved.write_bytes(saved.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="tiny.safetensors: not a valid safetensors file .* truncated or corrupt"):
        checkpoints.load_model(saved)
    saved.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="tiny.safetensors: its config tiny.json is missing"):
        checkpoints.load_generator(saved)


@pytest.mark.parametrize("caps", ["3.2", {"plane_basis": -1.0}, {"other": 1.0}, {"detail_basis": True}])
def test_config_with_malformed_mix_caps_is_refused(saved, caps):
    cfg = saved.with_suffix(".json")
    config = json.loads(cfg.read_text())
    config["networks"]["G_ema"]["attributes"]["mix_caps"] = caps
    cfg.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="tiny.safetensors: mix_caps must be None or"):
        checkpoints.load_generator(saved)
    config["networks"]["G_ema"]["attributes"]["mix_caps"] = {"plane_basis": 2}
    cfg.write_text(json.dumps(config))
    assert checkpoints.load_generator(saved).mix_caps == {"plane_basis": 2.0}


@pytest.mark.parametrize("class_name", ["os.system", "subprocess.Popen", "torch.nn.Linear"])
def test_config_naming_a_class_off_the_allow_list_is_refused(saved, class_name):
    cfg = saved.with_suffix(".json")
    config = json.loads(cfg.read_text())
    config["networks"]["D"]["class"] = class_name
    cfg.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"class '{class_name}' is not one editkit can build"):
        checkpoints.load_model(saved)


# ------------------------------------------------------------------------------------------------------ registry


def test_registry_loads_by_name_and_checks_sha256(saved, tiny_eg3d, monkeypatch):
    monkeypatch.setenv("EDITKIT_CHECKPOINTS", str(saved.parent))
    entry = {"file": saved.name, "sha256": checkpoints.sha256_file(saved), "kind": "teacher"}
    registry = saved.parent / "registry.json"
    registry.write_text(json.dumps({"models": {"tiny": entry}}))
    assert_same_state(checkpoints.load_generator("tiny"), tiny_eg3d["G_ema"])
    assert_same_state(checkpoints.load_generator("tiny.safetensors"), tiny_eg3d["G_ema"])  # found in the folder
    with pytest.raises(CheckpointError, match=r"unknown model 'nope'.*\(known: tiny\)"):
        checkpoints.load_generator("nope")
    registry.write_text(json.dumps({"models": {"tiny": {**entry, "sha256": "0" * 64}}}))
    with pytest.raises(CheckpointError, match="tiny.safetensors: sha256 .* does not match the registry"):
        checkpoints.load_generator("tiny")


def test_register_model_writes_an_entry_that_loads(saved, tiny_eg3d, tmp_path):
    folder = saved.parent
    (folder / "registry.json").write_text('{"models": {}}')
    entry = checkpoints.register_model("tiny", saved, "teacher", "tiny.md", "a tiny test model", folder=folder)
    assert entry["sha256"] == checkpoints.sha256_file(saved)
    assert checkpoints.read_registry(folder)["tiny"] == entry
    with pytest.raises(CheckpointError, match="must sit in"):
        checkpoints.register_model("elsewhere", tmp_path / "x" / "y.safetensors", "teacher", "", "", folder=folder)
    with pytest.raises(CheckpointError, match="kind must be"):
        checkpoints.register_model("tiny", saved, "critic", "", "", folder=folder)
    student = checkpoints.register_model("tiny-student", saved, "student", "s.md", "", folder=folder, teacher="tiny")
    assert checkpoints.read_registry(folder)["tiny-student"]["teacher"] == "tiny" == student["teacher"]
    with pytest.raises(CheckpointError, match="names its teacher"):
        checkpoints.register_model("orphan", saved, "student", "", "", folder=folder)
    with pytest.raises(CheckpointError, match="'ghost' is not registered"):
        checkpoints.register_model("orphan", saved, "student", "", "", folder=folder, teacher="ghost")


def test_repo_registry_is_valid():
    assert isinstance(checkpoints.read_registry(checkpoints.REPO_ROOT / "checkpoints"), dict)


def test_every_shipped_model_loads_by_name_and_renders():
    folder = checkpoints.REPO_ROOT / "checkpoints"
    for name, entry in checkpoints.read_registry(folder).items():
        assert (folder / entry["card"]).is_file(), f"{name} has no model card"
        G = checkpoints.load_generator(name)
        ws = G.mapping(torch.randn(1, G.z_dim), torch.zeros(1, 25))
        image = G.synthesis(ws, make_label(0.0, 0.0).float())["image"]
        assert image.shape == (1, 3, G.img_resolution, G.img_resolution) and torch.isfinite(image).all(), name


def test_named_model_labels_what_reports_compare():
    from editkit.checkpoints import named_model

    assert named_model("demo-student") == ("demo-student", "demo-student")
    assert named_model("runs/s1/student.safetensors") == ("student", "runs/s1/student.safetensors")
    assert named_model("stage1=runs/s1/student.safetensors") == ("stage1", "runs/s1/student.safetensors")
    for bad in ("=runs/x.safetensors", "stage1="):
        with pytest.raises(CheckpointError, match="LABEL=NAME_OR_PATH"):
            named_model(bad)
