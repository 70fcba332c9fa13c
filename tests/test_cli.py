import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from official_pickle import call_pickle
from safetensors.torch import load_file

from editkit import checkpoints
from editkit import cli
from editkit.cli import main

REPO = Path(__file__).resolve().parent.parent


def editkit(*args, env=None):
    """Run the CLI in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "editkit", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=120)


def test_help_lists_subcommands():
    out = editkit("--help")
    assert out.returncode == 0 and "convert" in out.stdout and "models" in out.stdout
    out = editkit("convert", "--help")
    assert out.returncode == 0 and "--network" in out.stdout and "--force" in out.stdout


def test_bad_pickle_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle at all")
    out = editkit("convert", bad, tmp_path / "out.safetensors")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"editkit: error: {bad}: not a readable EG3D pickle")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_refuses_payload_and_existing_output(tmp_path, capsys):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(call_pickle("os", "system", (f"touch {tmp_path / 'pwned'}",)))
    assert main(["convert", str(evil), str(tmp_path / "out.safetensors")]) == 2
    assert "refusing global 'os.system'" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "out.json").write_text("{}")
    assert main(["convert", str(evil), str(tmp_path / "out.safetensors")]) == 2
    assert "out.json already exists; use --force" in capsys.readouterr().err


def test_models_lists_registry(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDITKIT_CHECKPOINTS", str(tmp_path))
    (tmp_path / "registry.json").write_text('{"models": {}}')
    assert main(["models"]) == 0
    assert "no models registered yet" in capsys.readouterr().out
    (tmp_path / "t.safetensors").write_bytes(b"x" * 2_000_000)
    entry = {"file": "t.safetensors", "sha256": "0", "kind": "teacher", "description": "tiny teacher"}
    (tmp_path / "registry.json").write_text(json.dumps({"models": {"tiny": entry}}))
    assert main(["models"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split()[:4] == ["tiny", "teacher", "2.0", "MB"] and line.endswith("tiny teacher")


def test_unexpected_error_exits_1_without_traceback(tmp_path, capsys, monkeypatch):
    def broken(args):
        """Always fails."""
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(cli.COMMANDS, "models", (lambda parser: None, broken))
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("editkit: internal error: ZeroDivisionError: boom") and "Traceback" not in err
    assert main(["models", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_convert_end_to_end(official_pkl, render, reference_render, tmp_path):
    src, sentinel = official_pkl
    out = tmp_path / "tiny.safetensors"
    result = editkit("convert", src, out, "--network", "all")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and not sentinel.exists()
    config = json.loads(out.with_suffix(".json").read_text())
    assert sorted(config["networks"]) == ["D", "G", "G_ema"]
    assert config["provenance"]["source"] == {"file": src.name, "sha256": checkpoints.sha256_file(src)}
    assert config["provenance"]["data"]["resolution"] == 128 and config["provenance"]["data"]["random_seed"] == 7
    outputs = render(checkpoints.load_generator(out))
    assert outputs.keys() == reference_render.keys()
    assert all(torch.equal(v, reference_render[k]) for k, v in outputs.items())
    assert main(["convert", str(src), str(out)]) == 2  # exists
    assert main(["convert", str(src), str(out), "--network", "G", "--force"]) == 0
    assert list(checkpoints.load_model(out)) == ["G"]
    assert main(["convert", str(src), str(out), "--half", "--force"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["provenance"]["command"].endswith("--half")
    assert {t.dtype for t in load_file(out).values() if t.is_floating_point()} == {torch.float16}
