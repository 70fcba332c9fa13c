"""The web demo, served for real: a headless Chromium drives the page, gradio_client plays simultaneous users.

A tiny student (with a random, non-zero pose encoder, so turning the head changes the picture) and a tiny teacher
sharing its w space stand in for the shipped models; inversions take 2 steps. With
EDITKIT_SCREENSHOT=docs/demo_screenshot.png the browser test serves the shipped default model instead and saves
the README's screenshot there (docs/demo.md).
"""

import copy
import io
import json
import os
import re
import shutil
import socket
import threading
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import TINY_G_KWARGS
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from editkit import checkpoints
from editkit.cli import main
from editkit.demo import (DemoError, DemoModel, FALLBACK_MODEL, Demo, Limits, build_app, launch, load_models,
                          read_upload, safe_name, slider_range)
from editkit.editing.directions import Direction
from editkit.errors import EditkitError
from editkit.editing.registry import register_direction
from editkit.inversion import Settings
from editkit.latents import check_model, model_record, read_latent
from editkit.models.eg3d import TriPlaneGenerator
from editkit.models.student import Student

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make test` installs it); playwright never downloads browsers
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOT = os.environ.get("EDITKIT_SCREENSHOT")
SCREENSHOT_STEPS = 100  # inversion steps for the README screenshot (the shipped model)
LIMITS = Limits(max_upload_mb=0.3, max_side=1000, inversions=2, renders=2)
WAIT_MS = 600_000 if SCREENSHOT else 180_000  # generous: the machine may be shared with training runs


def tiny_pair():
    """(student, teacher): tiny 128 px networks sharing one w space; the student's pose encoder is non-zero."""
    kwargs = copy.deepcopy(TINY_G_KWARGS)
    kwargs["triplane_resolution"] = 32
    kwargs["rendering_kwargs"].update(depth_resolution=4, depth_resolution_importance=4)
    torch.manual_seed(0)
    teacher = TriPlaneGenerator(**kwargs).eval()
    teacher.neural_rendering_resolution = 16
    student = Student.from_teacher(teacher, width=0.125, channel_max=16).eval()
    with torch.no_grad():
        student.pose_encoder.head.weight.normal_(0, 1)  # a fresh student ignores the camera; this one must not
    return student, teacher


def smile(w_dim=512):
    """A random unit W direction called 'smile', with a sidecar spread."""
    vector = np.random.default_rng(0).standard_normal((1, w_dim)).astype(np.float32)
    return Direction(vector / np.linalg.norm(vector), "smile", "supervised-svm", data={"projection_std": 0.8})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    student, teacher = tiny_pair()
    path = checkpoints.save_model(tmp_path_factory.mktemp("model") / "tiny-student.safetensors", {"G_ema": student})
    return DemoModel(str(path), student, model_record(path), [smile()], teacher, "tiny-teacher")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(model, settings, limits, folder, examples=None):
    """A real demo server on 127.0.0.1 (Gradio's files under `folder`); yields its URL."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(folder))
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        app = build_app(model, settings, limits, examples=examples)
        port = free_port()
        launch(app, port=port, block=False)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.close()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    examples = [str(EXAMPLES / "synthetic_01.png"), str(EXAMPLES / "synthetic_02.png")]
    with serving(tiny_model, Settings(steps=2), LIMITS, tmp_path_factory.mktemp("gradio"), examples) as url:
        yield url


@pytest.fixture(scope="module")
def browser_server(request, tmp_path_factory):
    """The tiny server, or with EDITKIT_SCREENSHOT one serving the shipped default model for the README."""
    if not SCREENSHOT:
        yield request.getfixturevalue("server")
        return
    settings = Settings(steps=SCREENSHOT_STEPS)
    with serving(load_models(), settings, Limits(), tmp_path_factory.mktemp("gradio-shipped")) as url:
        yield url


def connect(url: str, downloads: Path) -> Client:
    """A gradio_client user of the demo at `url` (patient: the machine may be busy; no analytics)."""
    return Client(url, verbose=False, download_files=str(downloads), httpx_kwargs={"timeout": WAIT_MS / 1000},
                  analytics_enabled=False)


def oversized_png(path: Path) -> Path:
    """A noise PNG well over LIMITS.max_upload_mb."""
    noise = np.random.default_rng(1).integers(0, 256, (420, 420, 3), np.uint8)
    Image.fromarray(noise).save(path)
    assert path.stat().st_size > LIMITS.max_upload_mb * 1e6
    return path


def image_at(page, selector: str) -> np.ndarray:
    """The pixels of the <img> under `selector`, fetched from the server as the browser sees it."""
    response = page.request.get(page.locator(f"{selector} img").get_attribute("src"))
    assert response.ok
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"), dtype=np.int16)


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"{CHROMIUM} is absent (Debian package 'chromium'; "
                                                          "`make test` installs it)")
def test_browser_upload_invert_turn_the_head(browser_server, tmp_path):
    """Upload an example photo, wait for the inversion, move the yaw slider: the rendered face changes."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            elsewhere = []  # the page must load nothing from other hosts (fonts, scripts, analytics)
            local = (browser_server, "data:", "blob:")
            page.on("request", lambda r: r.url.startswith(local) or elsewhere.append(r.url))
            page.goto(browser_server)
            upload = page.locator("#photo input[type=file]")
            if not SCREENSHOT:  # an oversized file: a message, and the page goes on working
                upload.set_input_files(oversized_png(tmp_path / "huge.png"))
                expect(page.get_by_text("exceed the maximum allowed size")).to_be_visible()
            upload.set_input_files(EXAMPLES / "synthetic_02.png")
            page.locator("#photo img").wait_for()
            page.get_by_role("button", name="Invert", exact=True).click()
            page.locator("#status").get_by_text("inverted through").wait_for(timeout=WAIT_MS)
            expect(page.locator("#view img")).to_be_visible(timeout=WAIT_MS)
            before_src, before = page.locator("#view img").get_attribute("src"), image_at(page, "#view")

            yaw = page.locator("#yaw input[type=range]")
            target = "-30" if float(yaw.input_value()) > 0 else "30"
            yaw.fill(target)
            expect(page.locator("#view img")).not_to_have_attribute("src", before_src, timeout=WAIT_MS)
            after = image_at(page, "#view")
            assert page.locator("#yaw input[type=number]").input_value() == target
            assert after.shape == before.shape and np.abs(after - before).mean() > 1.0

            strength = page.locator("#direction-smile input[type=range]")
            if strength.count():  # an edit re-renders too
                before_src = page.locator("#view img").get_attribute("src")
                strength.fill(str(float(strength.get_attribute("max")) / 2))
                expect(page.locator("#view img")).not_to_have_attribute("src", before_src, timeout=WAIT_MS)
            teacher_box = page.locator("#with-teacher input")
            if teacher_box.is_visible():  # the teacher appears beside the student
                teacher_box.check()
                expect(page.locator("#teacher-view img")).to_be_visible(timeout=WAIT_MS)
            page.get_by_role("button", name="Prepare downloads: latent, images, orbit video", exact=True).click()
            for name in ("synthetic_02", "synthetic_02_view", "synthetic_02_orbit"):  # shown as "name .ext"
                expect(page.locator("#files")).to_contain_text(re.compile(rf"{name}\s*\."), timeout=WAIT_MS)
            page.wait_for_function("() => [...document.querySelectorAll('#view img, #teacher-view img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "demo_screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
            assert Image.open(shot).size[0] == 1280
            assert not elsewhere, elsewhere
        finally:
            browser.close()


def test_four_simultaneous_clients_all_get_results(server, tiny_model, tmp_path):
    photos = ["synthetic_00.png", "synthetic_01.png", "synthetic_03.png", "synthetic_04.png"]
    start = threading.Barrier(len(photos))

    def user(name):
        client = connect(server, tmp_path / name)
        start.wait()  # all four ask at once
        crop, yaw, pitch, strength, status = client.predict(handle_file(str(EXAMPLES / name)), api_name="/invert")
        view, teacher_view = client.predict(-yaw, pitch, True, 0.5, api_name="/render")
        return name, crop, status, view, teacher_view, client

    with ThreadPoolExecutor(len(photos)) as pool:
        results = list(pool.map(user, photos))
    for name, crop, status, view, teacher_view, _ in results:
        assert status.startswith(f"**{name}** inverted through `{tiny_model.name}`")
        assert Image.open(crop).size == (128, 128) and Image.open(view).size == (128, 128)
        assert Image.open(teacher_view["value"]).size == (128, 128)

    # the last user downloads: a zip of a latent folder `editkit edit` reads, the views, the crop, an orbit video
    name, _, _, _, _, client = results[-1]
    files = [Path(f) for f in client.predict(10, 0, True, 0.5, api_name="/export")]
    stem = Path(name).stem
    media = [f"{stem}_{kind}" for kind in ("view.png", "aligned.png", "orbit.mp4", "teacher.png")]
    assert [f.name for f in files] == [f"{stem}.zip", *media]
    with zipfile.ZipFile(files[0]) as bundle:
        names = [n for n in bundle.namelist() if not n.endswith("/")]
        assert sorted(names) == sorted(f"{stem}/{f}" for f in ["latent.npy", "latent.json", *media])
        bundle.extractall(tmp_path / "unzipped")
    ws, meta = read_latent(tmp_path / "unzipped" / stem)
    check_model(meta, stem)  # the latent names the weights it belongs to
    assert ws.shape == (1, tiny_model.G.num_ws, 512) and meta["camera"]["yaw"] == 10
    assert meta["edits"] == [{"attribute": "smile", "file": None, "strength": 0.5}] and meta["source"] == name
    assert files[3].stat().st_size > 1000


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server, tmp_path):
    client = connect(server, tmp_path / "downloads")
    (tmp_path / "notes.png").write_text("not an image at all\n")
    Image.fromarray(np.zeros((8, 1200, 3), np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    expected = {"notes.png": "notes.png: not an image file",
                "wide.png": "wide.png: the image is 1200 x 8 px; the limit is 1000 px per side",
                "wall.png": "wall.png: no face found"}
    for name, message in expected.items():
        with pytest.raises(AppError) as error:
            client.predict(handle_file(str(tmp_path / name)), api_name="/invert")
        assert str(error.value).startswith(message) and "Traceback" not in str(error.value)
    with pytest.raises(AppError, match="no photo inverted yet"):
        client.predict(0, 0, False, 0.0, api_name="/render")
    # an oversized upload is refused by the server itself, with a message
    with open(oversized_png(tmp_path / "huge.png"), "rb") as f:
        response = httpx.post(f"{server}gradio_api/upload", files={"files": ("huge.png", f, "image/png")})
    assert response.status_code == 413 and "exceeded maximum allowed size" in response.text
    # ... and the same server still serves
    *_, status = client.predict(handle_file(str(EXAMPLES / "synthetic_05.png")), api_name="/invert")
    assert "inverted through" in status


def start_and_drop(url: str, photo: Path) -> None:
    """Start an inversion of `photo` as the page does (upload, join the queue, follow the event stream), then close
    the connection once the optimisation is under way: a user closing the tab mid-inversion."""
    session = uuid.uuid4().hex
    with httpx.Client(timeout=WAIT_MS / 1000) as http:
        invert_fn = next(d["id"] for d in http.get(f"{url}config").json()["dependencies"]
                         if d["api_name"] == "invert")
        with open(photo, "rb") as f:
            path, = http.post(f"{url}gradio_api/upload", files={"files": (photo.name, f, "image/png")}).json()
        upload = {"path": path, "orig_name": photo.name, "meta": {"_type": "gradio.FileData"}}
        http.post(f"{url}gradio_api/queue/join",
                  json={"data": [upload], "fn_index": invert_fn, "session_hash": session}).raise_for_status()
        with http.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                message = json.loads(line.removeprefix("data:")) if line.startswith("data:") else {}
                assert message.get("msg") != "process_completed", message  # it must still be running
                if any(unit["desc"] == "invert" and (unit["index"] or 0) >= 1
                       for unit in message.get("progress_data") or []):
                    return  # step 2 is under way: leaving the `with` blocks closes the socket
    pytest.fail("the event stream ended before the inversion got under way")


def test_a_user_who_leaves_mid_inversion_stops_it_and_others_are_served(tiny_model, tmp_path, capfd):
    """The connection drops during an inversion: it stops at its next step, writes no output, and the next user
    (queued behind it: one inversion at a time) gets a correct result."""
    steps, gradio_files = 12, tmp_path / "gradio"  # the dropped inversion stops after about 2 steps
    with serving(tiny_model, Settings(steps=steps), replace(LIMITS, inversions=1), gradio_files, []) as url:
        start_and_drop(url, EXAMPLES / "synthetic_01.png")
        # the dropped inversion holds the only slot until its function returns: this result comes after it
        client = connect(url, tmp_path / "downloads")
        crop, *_, status = client.predict(handle_file(str(EXAMPLES / "synthetic_02.png")), api_name="/invert")
        written = {p: p.read_bytes() for p in gradio_files.rglob("*") if p.is_file()}  # removed when it closes
    assert status.startswith(f"**synthetic_02.png** inverted through `{tiny_model.name}`")
    assert f"({steps} steps)" in status and Image.open(crop).size == (128, 128)
    stopped = re.search(rf"editkit demo: synthetic_01.png: inversion stopped at step (\d+) of {steps}: its user left",
                        capfd.readouterr().out)
    assert stopped and int(stopped[1]) < steps
    # Gradio's folder holds the two uploads and the second user's crop: no output of the dropped inversion
    uploads = sorted(p.name for p in written if p.name.startswith("synthetic_"))
    outputs = [data for p, data in written.items() if not p.name.startswith("synthetic_")]
    assert uploads == ["synthetic_01.png", "synthetic_02.png"] and outputs == [Path(crop).read_bytes()], list(written)


def test_read_upload_limits(tmp_path):
    path = tmp_path / "face.png"
    Image.fromarray(np.full((50, 80, 3), 7, np.uint8)).save(path)
    assert read_upload(path, "face.png", Limits()).shape == (50, 80, 3)
    with pytest.raises(DemoError, match=r"face.png: the file is 0.0 MB; the limit is 1e-05 MB"):
        read_upload(path, "face.png", Limits(max_upload_mb=1e-5))
    with pytest.raises(DemoError, match="80 x 50 px; the limit is 64 px per side"):
        read_upload(path, "face.png", Limits(max_side=64))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(path.read_bytes()[:80])
    with pytest.raises(EditkitError, match="cut.png: the image is damaged and cannot be decoded"):
        read_upload(truncated, "cut.png", Limits())
    assert safe_name("../../<img src=x onerror=alert(1)>.png") == "img_src_x_onerror_alert_1_.png"
    assert safe_name("...") == "photo"


def test_no_directions_and_no_teacher(tiny_model):
    """Zero sliders and no teacher are fine: the page builds, renders work, asking for a teacher gives none."""
    bare = DemoModel("bare", tiny_model.G)
    app = build_app(bare, Settings(steps=1), examples=[])
    sliders = [c for c in app.config["components"] if c["type"] == "slider"]
    assert [c["props"]["elem_id"] for c in sliders] == ["yaw", "pitch"]
    demo = Demo(bare, Settings(steps=1))
    state = {"ws": tiny_model.G.w_avg.expand(1, tiny_model.G.num_ws, -1).numpy().copy()}
    view, teacher_view = demo.render(state, [], 10.0, 0.0, with_teacher=True)
    assert view.shape == (128, 128, 3) and view.dtype == np.uint8 and teacher_view is None
    with pytest.raises(DemoError, match="expected 0 direction strengths, got 1"):
        demo.render(state, [1.0], 0.0, 0.0)
    assert slider_range(smile()) == 2.4 and slider_range(Direction(smile().vector, "x", "sefa")) == 3.0


def test_load_models_from_a_registry(tmp_path, monkeypatch, capsys):
    """Default demo-student with its teacher and the teacher's directions; demo-teacher with a notice before."""
    monkeypatch.setenv("EDITKIT_CHECKPOINTS", str(tmp_path))
    (tmp_path / "registry.json").write_text('{"models": {}}')
    student, teacher = tiny_pair()
    checkpoints.save_model(tmp_path / "t.safetensors", {"G_ema": teacher})
    checkpoints.register_model(FALLBACK_MODEL, tmp_path / "t.safetensors", "teacher", "", "tiny")
    register_direction(smile(), FALLBACK_MODEL, folder=tmp_path / "directions")

    model = load_models(announce=print)
    assert model.name == FALLBACK_MODEL and "No 'demo-student' is registered yet" in model.notice
    assert model.teacher is None and [d.attribute for d in model.directions] == ["smile"]
    assert "serving the teacher 'demo-teacher' instead" in capsys.readouterr().out

    checkpoints.save_model(tmp_path / "s.safetensors", {"G_ema": student})
    checkpoints.register_model("demo-student", tmp_path / "s.safetensors", "student", "", "tiny",
                               teacher=FALLBACK_MODEL)
    model = load_models()
    assert model.name == "demo-student" and model.notice is None and model.teacher_name == FALLBACK_MODEL
    assert type(model.teacher).__name__ == "TriPlaneGenerator" and len(model.directions) == 1
    assert model.record["sha256"] == checkpoints.sha256_file(tmp_path / "s.safetensors")
    shutil.rmtree(tmp_path / "directions")
    assert load_models("demo-student").directions == []


def test_cli_demo_rejects_bad_options(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert main(["demo", "--model", "nonexistent"]) == 2
    assert "unknown model 'nonexistent'" in capsys.readouterr().err
