"""Bad inputs and interruptions on the real code paths: images, faces, weights, data folders, outputs, training
states and the CLI's exit codes. docs/reliability.md lists every case with the test that checks it."""

import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from editkit import checkpoints, cli
from editkit.cli import main
from editkit.errors import CheckpointError, EditkitWarning, FaceError, ImageError, OutputError, OutputExistsError
from editkit.faces import detect_faces, prepare_face
from editkit.images import load_image
from editkit.io import atomic_write, check_outputs, check_writable, output_group, remove_replaced
from training.distill.data import DatasetError, read_labels
from training.state import StateError, load_latest_state, save_state, state_files

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def blocks(height=48, width=64, seed=0) -> np.ndarray:
    """A picture of 8 px colour blocks: smooth enough to survive JPEG nearly unchanged."""
    colours = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return np.kron(colours, np.ones((8, 8, 1), np.uint8))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header declares width x height RGB pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, C) colours composited over white with (H, W) alpha, rounded."""
    weight = alpha[..., None] / 255
    return np.round(colour * weight + 255 * (1 - weight))


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------------------- images


def test_damaged_and_foreign_files_are_one_line_image_errors(tmp_path):
    picture = Image.fromarray(blocks())
    jpeg, png = encode(picture, "JPEG"), encode(picture, "PNG")
    corrupt = bytearray(png)
    corrupt[png.index(b"IDAT") + 20] ^= 0xFF  # a flipped byte inside the compressed pixels
    cases = {
        "truncated.jpg": (jpeg[:len(jpeg) // 2], "damaged and cannot be decoded"),
        "truncated.png": (png[:len(png) // 2], "damaged and cannot be decoded"),
        "corrupt.png": (bytes(corrupt), "damaged and cannot be decoded"),
        "empty.jpg": (b"", r"the file is empty \(0 bytes\)"),
        "notes.jpg": (b"shopping list: eggs, milk\n", r"not an image file \(JPEG, PNG"),
        "bomb.png": (png_declaring(100_000, 100_000), "declares far more than 64 MP"),  # Pillow's own guard
        "large.png": (png_declaring(9_000, 9_000), r"9000 x 9000 pixels \(81 MP\), more than the 64 MP"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(ImageError, match=message) as error:
            load_image(written(tmp_path / name, data))
        assert str(error.value).startswith(f"{tmp_path / name}: ") and "\n" not in str(error.value), name
    with pytest.raises(ImageError, match=r"upload.png: the image is 1000 x 800 pixels \(1 MP\), more than the 0.1"):
        load_image(written(tmp_path / "a", png_declaring(1000, 800)), max_pixels=100_000, name="upload.png")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ImageError, match="floating-point image"):
        load_image(tmp_path / "float.tiff")


def test_every_mode_becomes_rgb_uint8(tmp_path):
    rgb = blocks()

    def check(image: Image.Image, fmt: str, expected: np.ndarray, tolerance: int = 0, **options):
        out = load_image(written(tmp_path / f"x.{fmt.lower()}", encode(image, fmt, **options)))
        assert out.dtype == np.uint8 and out.shape == expected.shape, (image.mode, fmt)
        assert np.abs(out.astype(int) - expected).max() <= tolerance, (image.mode, fmt)

    check(Image.fromarray(rgb[..., 1]), "PNG", np.repeat(rgb[..., 1:2], 3, axis=2))  # grayscale
    palette = Image.fromarray(rgb).quantize(16)
    check(palette, "PNG", np.asarray(palette.convert("RGB")))
    check(Image.fromarray(rgb).convert("CMYK"), "JPEG", rgb, tolerance=12, quality=98)
    wide = np.linspace(0, 65535, rgb.shape[0] * rgb.shape[1]).reshape(rgb.shape[:2]).astype(np.uint16)
    grey = np.round(wide / 257).astype(np.uint8)  # scaled, where Pillow's own conversion would clip at 255
    check(Image.fromarray(wide), "PNG", np.repeat(grey[..., None], 3, axis=2))
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 16:32], alpha[:, 32:] = 255, 128  # transparent, opaque, half
    check(Image.fromarray(np.dstack([rgb, alpha])), "PNG", on_white(rgb, alpha), tolerance=1)
    check(Image.fromarray(np.dstack([rgb[..., 0], alpha])), "PNG",
          np.repeat(on_white(rgb[..., :1], alpha), 3, axis=2), tolerance=1)  # grey + alpha
    clear = palette.copy()
    clear.info["transparency"] = int(np.asarray(palette)[0, 0])  # the first block's colour becomes transparent
    expected = np.asarray(palette.convert("RGB")).copy()
    expected[np.asarray(palette) == np.asarray(palette)[0, 0]] = 255
    check(clear, "PNG", expected, transparency=clear.info["transparency"])


def test_exif_orientation_is_respected(tmp_path):
    rgb = blocks(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright = np.rot90(rgb, -1)
    png = load_image(written(tmp_path / "phone.png", encode(Image.fromarray(rgb), "PNG", exif=exif)))
    assert png.shape == (64, 48, 3) and np.array_equal(png, upright)
    path = written(tmp_path / "phone.jpg", encode(Image.fromarray(rgb), "JPEG", exif=exif))
    with Image.open(path) as stored:  # the pixels as stored, sideways
        assert np.array_equal(load_image(path), np.rot90(np.asarray(stored), -1))


def test_animated_gif_gives_its_first_frame_and_a_warning(tmp_path):
    frames = [Image.fromarray(blocks(seed=s)).quantize(32) for s in (0, 1, 2)]
    path = written(tmp_path / "anim.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    with pytest.warns(EditkitWarning, match="anim.gif: GIF image with 3 frames; using the first one"):
        out = load_image(path)
    assert np.array_equal(out, np.asarray(frames[0].convert("RGB")))


# What load_image must return for the valid images of the property test: lossless formats per mode.
LOSSLESS = {"RGB": ["PNG", "BMP", "TIFF", "WEBP"], "L": ["PNG", "BMP", "TIFF"], "RGBA": ["PNG", "TIFF", "WEBP"],
            "P": ["PNG", "BMP", "GIF"], "I;16": ["PNG", "TIFF"]}


@st.composite
def image_files(draw):
    """(bytes of a small valid image file, the pixels load_image must return, tolerance)."""
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    mode = draw(st.sampled_from(sorted(LOSSLESS)))
    fmt = draw(st.sampled_from(LOSSLESS[mode]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    tolerance = 0
    if mode == "P":
        colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
        indices = rng.integers(0, 16, (height, width), dtype=np.uint8)
        image = Image.fromarray(indices, "P")
        image.putpalette(colours.tobytes())
        expected = colours[indices]
    elif mode == "I;16":
        values = rng.integers(0, 65536, (height, width)).astype(np.uint16)
        image, expected = Image.fromarray(values), np.repeat(np.round(values / 257)[..., None], 3, 2)
    else:
        pixels = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
        expected = np.repeat(pixels, 3, 2) if mode == "L" else pixels
        if mode == "RGBA":
            expected, tolerance = on_white(pixels[..., :3], pixels[..., 3]), 1
    options = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    return encode(image, fmt, **options), expected.astype(np.uint8), tolerance


@st.composite
def damaged_image_files(draw):
    """A valid image file cut short or with a few bytes changed."""
    data = bytearray(draw(image_files())[0])
    if draw(st.booleans()):
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.binary(max_size=2048), damaged_image_files()))
def test_random_bytes_give_an_image_or_an_image_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder) / "upload", data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EditkitWarning)
                pixels = load_image(path)
        except ImageError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        else:
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3


@settings(max_examples=300, deadline=None)
@given(image_files())
def test_random_valid_images_round_trip(case):
    data, expected, tolerance = case
    with tempfile.TemporaryDirectory() as folder:
        pixels = load_image(written(Path(folder) / "image", data))
    assert pixels.shape == expected.shape and np.abs(pixels.astype(int) - expected).max() <= tolerance


# ----------------------------------------------------------------------------------------------------------- faces


def test_several_faces_largest_first_and_face_index():
    big = load_image(EXAMPLES / "synthetic_00.png")
    small = np.asarray(Image.fromarray(load_image(EXAMPLES / "synthetic_03.png")).resize((256, 256), Image.LANCZOS))
    photo = np.full((512, 512 + 256, 3), 255, np.uint8)
    photo[:, :512], photo[128:384, 512:] = big, small
    faces = detect_faces(photo)
    assert len(faces) == 2 and faces[0].area > 2 * faces[1].area
    first, second = prepare_face(photo, 128), prepare_face(photo, 128, face_index=1)
    assert first.face.box[2] <= 520 and second.face.box[0] >= 500  # the largest (left) face is the default
    with pytest.raises(FaceError, match="face index 2 asked for, but 2 face"):
        prepare_face(photo, 128, face_index=2)


# ------------------------------------------------------------------------------------------- weights, data folders


def test_config_that_does_not_match_its_weights(tiny_eg3d, tmp_path, capsys):
    path = checkpoints.save_model(tmp_path / "g.safetensors", {"G_ema": tiny_eg3d["G_ema"]})
    config_file = path.with_suffix(".json")
    config = json.loads(config_file.read_text())
    config["networks"]["G_ema"]["init_kwargs"]["channel_max"] = 32  # another width than the weights have
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"g.safetensors \[G_ema\]: weights do not fit TriPlaneGenerator: "
                                              r"wrong shapes: .*written for another configuration"):
        checkpoints.load_generator(path)
    config["networks"]["G_ema"]["init_kwargs"]["widht"] = 3
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"g.safetensors: init_kwargs do not fit .*TriPlaneGenerator .*unexpected keyword argument .widht."):
        checkpoints.load_generator(path)
    photo, out = EXAMPLES / "synthetic_00.png", tmp_path / "out"
    assert main(["invert", str(photo), "--out", str(out), "--model", str(path)]) == 2  # the CLI: exit 2, one line
    err = capsys.readouterr().err
    assert err.startswith("editkit: error: ") and "init_kwargs do not fit" in err and err.count("\n") == 1
    assert not out.exists()


def write_dataset(folder: Path, names, labelled=None) -> Path:
    """An EG3D-layout folder holding `names` (tiny PNGs) with a dataset.json labelling `labelled` (default: all)."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blocks(16, 16)).save(folder / name)
    labels = [[name, [0.0] * 25] for name in (names if labelled is None else labelled)]
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    return folder


def test_dataset_labels_that_do_not_match_the_images(tmp_path):
    good = write_dataset(tmp_path / "good", ["00000/img0.png", "00000/img1.png"])  # EG3D's nested layout
    assert [name for name, _ in read_labels(good)] == ["00000/img0.png", "00000/img1.png"]
    cases = {
        "unlabelled": (["a.png", "b.png", "c.png"], ["a.png"], r"2 image\(s\) in .* have no label \(first: b.png\)"),
        "twice": (["a.png"], ["a.png", "a.png"], r"labels\[1\] names a.png a second time"),
        "outside": (["a.png"], ["../good/00000/img0.png"], "outside the dataset folder"),
        "missing": (["a.png"], ["a.png", "gone.png"], r"labels\[1\] names gone.png, which is not in"),
    }
    for name, (images, labelled, message) in cases.items():
        with pytest.raises(DatasetError, match=message) as error:
            read_labels(write_dataset(tmp_path / name, images, labelled))
        assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------------------- outputs


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot create files in: a read-only folder for a normal user; for root, who may
    write anywhere on an ordinary file system, sysfs (which refuses new files even to root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs to stand for a folder root cannot write")
    yield Path("/sys/kernel")


def test_unwritable_output_folders_are_one_line_errors_before_any_work(unwritable, tmp_path, capsys):
    a_file = written(tmp_path / "a_file", b"x")
    for folder in (unwritable / "out", a_file / "out"):
        with pytest.raises(OutputError, match=f"cannot write into {folder}"):
            check_writable(folder)
        with pytest.raises(OutputError, match=f"cannot write {folder / 'x.txt'}: "):
            atomic_write(folder / "x.txt", lambda tmp: tmp.write_text("x"))
    # convert would first spend its time reading the pickle: the output folder is refused before that
    junk = written(tmp_path / "junk.pkl", b"not read")
    assert main(["convert", str(junk), str(unwritable / "out" / "g.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"editkit: error: cannot write into {unwritable / 'out'}") and err.count("\n") == 1
    assert main(["invert", str(junk), "--out", str(a_file / "out")]) == 2  # before the photo is even opened
    assert "is a file, not a folder" in capsys.readouterr().err


def test_directions_refuse_existing_outputs_before_the_slow_part(tmp_path, capsys):
    existing = written(tmp_path / "smile.npy", b"mine")
    for command in (["fit", "--model", "no-such-model", "--attr", "smile"], ["import", str(tmp_path / "none.npy")]):
        assert main(["directions", *command, "--out", str(existing)]) == 2
        assert f"{existing} already exists; use --force" in capsys.readouterr().err  # not the model or the input
    assert main(["directions", "fit", "--model", "m", "--attr", "smile", "--out", str(tmp_path / "smile.txt")]) == 2
    assert "direction files end in .npy" in capsys.readouterr().err
    assert existing.read_bytes() == b"mine"


def test_a_failed_group_writes_nothing_and_a_good_one_everything(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old")

    def disk_full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="cannot write .*b.txt: No space left on device; choose another"):
        with output_group():
            atomic_write(first, lambda tmp: tmp.write_text("new"), force=True)
            atomic_write(second, disk_full)
    assert first.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with output_group():
        atomic_write(first, lambda tmp: tmp.write_text("new"), force=True)
        atomic_write(second, lambda tmp: tmp.write_text("new"))
        assert first.read_text() == "old" and not second.exists()  # held back until the group ends
    assert first.read_text() == second.read_text() == "new"
    with pytest.raises(OutputExistsError, match="b.txt already exists; use --force"):
        check_outputs([tmp_path / "c.txt", second])
    check_outputs([tmp_path / "c.txt", second], force=True)


def test_a_forced_rerun_removes_only_the_earlier_runs_files_inside_its_folder(tmp_path):
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    for name in ("plots/old.png", "plots/kept.png", "notes.txt"):
        (out / name).write_text("x")
    (tmp_path / "outside.png").write_text("x")
    previous = ["plots/old.png", "plots/kept.png", "../outside.png", str(tmp_path / "outside.png"), "plots"]
    removed = remove_replaced(out, previous, [out / "plots" / "kept.png"])
    assert removed == [(out / "plots" / "old.png").resolve()]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "out", "out/notes.txt", "out/plots", "out/plots/kept.png", "outside.png"]


WRITER = """
import sys, time
from editkit.io import atomic_write

def slow(tmp):
    with open(tmp, "w") as f:
        f.write("half of the new content")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

atomic_write(sys.argv[1], slow, force=True)
"""


def test_kill_9_mid_write_leaves_the_old_file_whole(tmp_path):
    out = written(tmp_path / "result.json", b"old")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], cwd=REPO, env=ENV, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"writing\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert out.read_bytes() == b"old"
    [leftover] = [p.name for p in tmp_path.iterdir() if p != out]  # a hidden temporary file, never the output
    assert leftover.startswith(".result.json.") and leftover.endswith(".tmp")


# -------------------------------------------------------------------------------------------------- training state


def test_corrupted_latest_state_falls_back_and_all_corrupted_stops(tmp_path):
    for step in (1, 2, 3):
        save_state(tmp_path, step, {"step": step, "w": torch.full((4,), float(step))})
    newest, older = state_files(tmp_path)
    assert (newest.name, older.name) == ("state-00000003.pt", "state-00000002.pt")  # the last two are kept
    newest.write_bytes(newest.read_bytes()[:100])
    messages = []
    state = load_latest_state(tmp_path, log=messages.append)
    assert state["step"] == 2 and torch.equal(state["w"], torch.full((4,), 2.0))
    assert messages[0].startswith("skipping unreadable training state state-00000003.pt")
    older.write_bytes(b"not a state")
    with pytest.raises(StateError, match="none of its 2 training state"):  # never a silent restart from step 0
        load_latest_state(tmp_path, log=messages.append)
    assert load_latest_state(tmp_path / "new-run") is None


SAVER = """
import sys, torch
from training.state import save_state

weights = torch.arange(2_000_000, dtype=torch.float32)
for step in range(1, 10_000):
    save_state(sys.argv[1], step, {"step": step, "weights": weights + step})
    print(step, flush=True)
"""


def test_kill_9_while_saving_states_then_resume(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], cwd=REPO, env=ENV, stdout=subprocess.PIPE)
    for _ in range(4):
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)  # the loop does nothing but save: the kill lands in or between writes
    proc.wait()
    proc.stdout.close()
    state = load_latest_state(tmp_path)
    assert state["step"] >= 4 and torch.equal(state["weights"], torch.arange(2_000_000.0) + state["step"])
    save_state(tmp_path, state["step"] + 1, {"step": state["step"] + 1})  # the resumed run saves again ...
    assert all(not p.name.endswith(".tmp") for p in tmp_path.iterdir())  # ... and clears a killed save's leftover


# ------------------------------------------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_one_line_warnings(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as usage:  # a usage error: argparse's own exit 2
        main(["invert", "photo.jpg"])
    assert usage.value.code == 2 and "--out" in capsys.readouterr().err
    photo = written(tmp_path / "photo.jpg", b"<html>not a photo</html>")
    assert main(["invert", str(photo), "--out", str(tmp_path / "out"), "--model", "no-such-model"]) == 2
    assert capsys.readouterr().err == f"editkit: error: {photo}: not an image file (JPEG, PNG, WebP, BMP, TIFF or " \
                                      "GIF expected)\n"
    assert not (tmp_path / "out").exists()
    frames = [Image.fromarray(blocks(seed=s)).quantize(8) for s in (0, 1)]
    gif = written(tmp_path / "anim.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))

    def read(args):
        """Read an image."""
        load_image(args.path)

    monkeypatch.setitem(cli.COMMANDS, "models", (lambda parser: parser.add_argument("path"), read))
    assert main(["models", str(gif)]) == 0
    assert capsys.readouterr().err == f"editkit: warning: {gif}: GIF image with 2 frames; using the first one\n"
