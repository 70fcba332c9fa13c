"""`editkit demo`: a Gradio web page to invert a photo, edit it with sliders and turn the head.

    editkit demo [--model NAME] [--host 127.0.0.1] [--port 7860]

    from editkit.demo import build_app, launch, load_models
    app = build_app(load_models("demo-student"), Settings(steps=100))
    launch(app, port=7860)

The page: a photo (upload or an example) is aligned and inverted through the model (a progress bar follows the
optimisation); then one slider per shipped direction plus yaw and pitch re-render the edited latent on every move;
a checkbox shows the student's teacher beside it (same latent, edits and view); a button writes the latent, the
images and an orbit video for download. Uploads are limited in bytes and pixels, every error reaches the page as a
one-line message, a queue with concurrency limits serves simultaneous users in turn, and an inversion whose user
left (page closed, connection dropped) stops at its next step. docs/demo.md has the details and the measured latency
of a slider update.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from editkit import cameras, checkpoints
from editkit.editing import registry
from editkit.editing.directions import Direction, apply_edits
from editkit.editing.edit import ORBIT_FPS, ORBIT_PITCH, ORBIT_YAW
from editkit.editing.render import render_images, save_mp4, save_png
from editkit.errors import EditkitError, one_line
from editkit.faces import prepare_face
from editkit.images import load_image
from editkit.inversion import Settings, generator_kind, invert, to_tensor
from editkit.latents import camera_record, model_record, write_latent
from editkit.perceptual import LPIPS

DEFAULT_MODEL = "demo-student"
FALLBACK_MODEL = "demo-teacher"  # served, with a notice, while no demo-student is registered
EXAMPLES_DIR = checkpoints.REPO_ROOT / "examples"
YAW_RANGE, PITCH_RANGE = 45.0, 30.0   # slider limits in degrees
DEFAULT_STRENGTH_RANGE = 3.0          # slider limit of a direction whose sidecar gives no projection_std
SLIDERS_PER_ROW = 3
ORBIT_FRAMES = 48
# 128 px renders are shown enlarged (smoothly) to fill their boxes
CSS = "#view img, #teacher-view img, #aligned img {width: 100%; height: 100%; object-fit: contain;}"
EXPORT_MAX_AGE_S = 3600               # download folders older than this are removed at the next export


class DemoError(EditkitError):
    """A problem the page reports to its user: a bad upload, no face, nothing inverted yet."""


class Abandoned(DemoError):
    """An inversion stopped because its user left: nobody is waiting for its result."""


@dataclass
class Limits:
    """What one request may ask of the server."""

    max_upload_mb: float = 10.0  # bytes of an uploaded photo (also Gradio's upload limit)
    max_side: int = 4096         # pixels along either side of an uploaded photo
    inversions: int = 1          # inversions and exports running at once; the rest wait in the queue
    renders: int = 2             # slider updates running at once
    queue_size: int = 64         # requests waiting at most; beyond, a user is told the queue is full


@dataclass
class DemoModel:
    """The generator the page inverts into and edits, with its directions and (optionally) its teacher."""

    name: str
    G: torch.nn.Module
    record: dict | None = None   # {'name', 'file', 'sha256'} of its weights file (editkit.latents.model_record)
    directions: list[Direction] = field(default_factory=list)
    teacher: torch.nn.Module | None = None
    teacher_name: str | None = None
    notice: str | None = None    # shown on the page (e.g. that a fallback model is served)


def find_teacher(name: str, path: Path) -> str | None:
    """The teacher of a student: its registry entry's "teacher", else its checkpoint provenance's data.teacher."""
    entry = checkpoints.read_registry().get(name, {})
    if entry.get("teacher"):
        return entry["teacher"]
    if path.suffix != ".safetensors":
        return None
    teacher = ((checkpoints.read_config(path).get("provenance") or {}).get("data") or {}).get("teacher")
    if not teacher:
        return None
    try:
        checkpoints.resolve_checkpoint(teacher)
    except checkpoints.CheckpointError:
        return None  # recorded, but not here (e.g. a path on the training machine)
    return teacher


def load_models(name: str | None = None, teacher: str | None = None, announce=print) -> DemoModel:
    """The model to serve (default demo-student; demo-teacher with a notice while no student is registered), its
    teacher (`teacher`, else the one its registry entry or provenance names) and the shipped directions of their
    w space."""
    notice, registered = None, checkpoints.read_registry()
    if name is None:
        name = DEFAULT_MODEL
        if name not in registered:
            name = FALLBACK_MODEL
            notice = (f"No '{DEFAULT_MODEL}' is registered yet: serving the teacher '{name}' instead (inversion is "
                      "about 10x slower than through a student; no teacher comparison).")
            announce(f"editkit demo: {notice}")
    path = checkpoints.resolve_checkpoint(name)
    G = checkpoints.load_generator(path)
    teacher = teacher or (find_teacher(name, path) if generator_kind(G) == "student" else None)
    G_T = checkpoints.load_generator(teacher) if teacher else None
    # directions are looked up by registry name: the model's own, else (for a weights file) its teacher's
    source = name if name in registered else teacher if teacher in registered else None
    directions = registry.shipped_directions(source, G.num_ws, G.w_dim) if source else []
    return DemoModel(name, G, model_record(name), directions, G_T, teacher, notice)


def read_upload(path, name: str, limits: Limits) -> np.ndarray:
    """An uploaded photo as RGB uint8 (H, W, 3) (editkit.images.load_image), within the limits."""
    path = Path(path)
    megabytes = path.stat().st_size / 1e6
    if megabytes > limits.max_upload_mb:
        raise DemoError(f"{name}: the file is {megabytes:.1f} MB; the limit is {limits.max_upload_mb:g} MB")
    try:
        with Image.open(path) as image:  # the header only: the size is checked before anything is decoded
            width, height = image.size
    except (OSError, Image.DecompressionBombError):
        width = height = 0  # not a readable image: load_image says what is wrong with it
    if max(width, height) > limits.max_side:
        raise DemoError(f"{name}: the image is {width} x {height} px; the limit is {limits.max_side} px per side")
    return load_image(path, name=name)


def slider_range(direction: Direction) -> float:
    """The largest strength a direction's slider offers: 3x the samples' spread along it, where known."""
    spread = direction.data.get("projection_std")
    return round(3 * float(spread), 2) if spread else DEFAULT_STRENGTH_RANGE


def safe_name(name: str) -> str:
    """An uploaded file's name, reduced to letters, digits and `._-` (it is shown on the page and names files)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._")[-80:] or "photo"


class Demo:
    """The page's work, free of Gradio: invert an upload, render an edited view, write the downloads.

    A session's state is a plain dict (`invert_photo` makes it); everything else reads it and never changes it.
    """

    def __init__(self, model: DemoModel, settings: Settings | None = None, limits: Limits | None = None):
        self.model, self.settings, self.limits = model, settings or Settings(), limits or Limits()
        for G in (model.G, model.teacher):
            if G is not None:  # frozen for good: concurrent inversions then never toggle the flags
                G.requires_grad_(False)
        self.perceptual = LPIPS(self.settings.lpips)
        self.face_lock = threading.Lock()  # the face detectors are not known to be thread-safe
        self._exports = tempfile.TemporaryDirectory(prefix="editkit-demo-")  # removed when the demo goes away
        self.exports = Path(self._exports.name)

    def invert_photo(self, path, name: str, progress=lambda fraction, desc: None, abandoned=lambda: False) -> dict:
        """Align and invert an uploaded photo (`name`: its file name); the session state: latent, camera, crop,
        losses, timings. `abandoned()` is asked before every step: when it says yes, the inversion stops with
        `Abandoned`."""
        start, name = time.perf_counter(), safe_name(name)
        progress(0.0, "finding the face")
        image = read_upload(path, name, self.limits)
        G = self.model.G
        with self.face_lock:
            face = prepare_face(image, G.img_resolution, source=name)
        progress(0.05, "inverting")

        def stop_if_abandoned(step):
            if abandoned():
                raise Abandoned(f"{name}: inversion stopped at step {step} of {self.settings.steps}: its user left")

        result = invert(G, to_tensor([face.image]), face.label[None], self.settings,
                        mask=torch.from_numpy(face.valid)[None, None], perceptual=self.perceptual,
                        before_step=stop_if_abandoned)
        (yaw, pitch), = result.yaw_pitch()
        return {"ws": result.ws.numpy(), "yaw": yaw, "pitch": pitch, "source": name, "aligned": face.image,
                "losses": {k: v[0] for k, v in result.losses.items()}, "seconds": time.perf_counter() - start,
                "steps": self.settings.steps}

    def edited(self, state: dict, strengths) -> torch.Tensor:
        """The session's latent moved by strength_i * direction_i."""
        if state is None:
            raise DemoError("no photo inverted yet: upload a photo (or pick an example) and press Invert")
        if len(strengths) != len(self.model.directions):
            raise DemoError(f"expected {len(self.model.directions)} direction strengths, got {len(strengths)}")
        edits = [(d, float(s)) for d, s in zip(self.model.directions, strengths) if s]
        return apply_edits(torch.from_numpy(state["ws"]), edits)

    def render(self, state: dict, strengths, yaw: float, pitch: float, with_teacher: bool = False):
        """(student view, teacher view or None) of the edited latent at yaw/pitch: (R, R, 3) uint8 images."""
        ws, label = self.edited(state, strengths), cameras.make_label(float(yaw), float(pitch))
        view = render_images(self.model.G, ws, label)[0]
        teacher = self.model.teacher
        return view, (render_images(teacher, ws, label)[0] if with_teacher and teacher is not None else None)

    def export(self, state: dict, strengths, yaw: float, pitch: float, with_teacher: bool = False) -> list[Path]:
        """Write the downloads: a zip of a folder `editkit edit` reads (latent.npy + latent.json, the views, the
        crop, an orbit video), then the images and the video alone."""
        ws = self.edited(state, strengths)
        view, teacher_view = self.render(state, strengths, yaw, pitch, with_teacher)
        frames = render_images(self.model.G, ws.expand(ORBIT_FRAMES, -1, -1),
                               cameras.orbit(ORBIT_FRAMES, ORBIT_YAW, ORBIT_PITCH), desc="orbit video")
        self.remove_old_exports()
        stem = Path(state["source"]).stem
        folder = Path(tempfile.mkdtemp(dir=self.exports)) / stem
        record = {"model": self.model.record or {"name": self.model.name, "file": None, "sha256": None},
                  "generator": generator_kind(self.model.G), "source": state["source"],
                  "camera": camera_record(yaw, pitch), "inverted_camera": camera_record(state["yaw"], state["pitch"]),
                  "edits": [{"attribute": d.attribute, "file": None, "strength": float(s)}
                            for d, s in zip(self.model.directions, strengths) if s],
                  "losses": state["losses"], "steps": state["steps"], "written_by": "editkit demo"}
        write_latent(folder, ws, record)
        media = [save_png(folder / f"{stem}_view.png", view),
                 save_png(folder / f"{stem}_aligned.png", state["aligned"]),
                 save_mp4(folder / f"{stem}_orbit.mp4", frames, ORBIT_FPS)]
        if teacher_view is not None:
            media.append(save_png(folder / f"{stem}_teacher.png", teacher_view))
        bundle = shutil.make_archive(str(folder), "zip", folder.parent, stem)
        return [Path(bundle), *media]

    def remove_old_exports(self):
        """Delete download folders older than EXPORT_MAX_AGE_S (Gradio has copied them into its own cache)."""
        for folder in self.exports.iterdir():
            if time.time() - folder.stat().st_mtime > EXPORT_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- the page


def as_message(fn):
    """Turn every exception of a page callback into a one-line message on the page (a traceback only in the log)."""
    import gradio as gr

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except EditkitError as e:
            raise gr.Error(one_line(e), print_exception=False) from None
        except Exception as e:  # a bug: the page gets one line, the server log the traceback
            traceback.print_exc()
            raise gr.Error(f"internal error ({type(e).__name__}); the server log has the details",
                           print_exception=False) from None
    return wrapper


def client_gone() -> bool:
    """Whether the Gradio event running this call has lost its client: the page was closed, the connection dropped
    or the event was cancelled. Gradio 6 lets such a function run to its end and throws the result away; this reads
    its queue (internals: `_queue.active_jobs`, `Event.alive`; tests/test_demo.py notices if they change)."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    if blocks is None or event_id is None:
        return False  # not run by a queued Gradio event
    return not any(event._id == event_id and event.alive for job in blocks._queue.active_jobs if job for event in job)


def example_photos() -> list[str]:
    """The shipped example photos (examples/*.png)."""
    return [str(p) for p in sorted(EXAMPLES_DIR.glob("*.png"))]


def build_app(model: DemoModel, settings: Settings | None = None, limits: Limits | None = None,
              examples: list[str] | None = None):
    """The Gradio Blocks app for `model` (queue configured; start it with `launch`).

    API endpoints (gradio_client): /invert (photo -> crop, yaw, pitch, direction strengths, status), /render
    (yaw, pitch, teacher?, strengths -> student and teacher views), /export (same inputs -> files).
    """
    import gradio as gr

    demo = Demo(model, settings, limits)
    limits = demo.limits
    directions, teacher_name = model.directions, model.teacher_name if model.teacher is not None else None
    examples = example_photos() if examples is None else examples

    def invert_event(upload, progress=gr.Progress(track_tqdm=True)):
        # The event skips Gradio's preprocessing (it would fail on a non-image with a raw PIL message): `upload`
        # is Gradio's file record of the upload, already checked to lie in its upload folder.
        if not upload:
            raise DemoError("no photo: upload one (or pick an example) first")
        try:
            state = demo.invert_photo(upload["path"], upload.get("orig_name") or upload["path"],
                                      lambda fraction, desc: progress(fraction, desc=desc), client_gone)
        except Abandoned as e:
            print(f"editkit demo: {one_line(e)}", flush=True)  # the server's log: no page is left to show it
            raise
        losses = state["losses"]
        status = (f"**{state['source']}** inverted through `{model.name}` in {state['seconds']:.1f} s "
                  f"({state['steps']} steps): PSNR {losses['psnr']:.1f} dB, LPIPS {losses['lpips']:.3f}; camera yaw "
                  f"{state['yaw']:+.0f}, pitch {state['pitch']:+.0f} degrees.")
        yaw = float(np.clip(round(state["yaw"]), -YAW_RANGE, YAW_RANGE))
        pitch = float(np.clip(round(state["pitch"]), -PITCH_RANGE, PITCH_RANGE))
        return [state, state["aligned"], yaw, pitch, *[0.0] * len(directions), status]

    def render_event(state, yaw, pitch, with_teacher, *strengths):
        view, teacher_view = demo.render(state, strengths, yaw, pitch, with_teacher)
        return view, gr.update(value=teacher_view, visible=teacher_view is not None)

    def export_event(state, yaw, pitch, with_teacher, *strengths):
        return [str(p) for p in demo.export(state, strengths, yaw, pitch, with_teacher)]

    with gr.Blocks(title="editkit demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## editkit: 3D-aware face editing\nModel `{model.name}` ({generator_kind(model.G)}, "
                    f"{model.G.img_resolution} px). Upload a face photo or pick an example, press **Invert**, then "
                    "move the sliders." + (f"\n\n**Note:** {model.notice}" if model.notice else ""))
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.Image(label=f"Photo (at most {limits.max_upload_mb:g} MB, {limits.max_side} px a side)",
                                 type="filepath", sources=["upload", "clipboard"], height=280, elem_id="photo")
                invert_button = gr.Button("Invert", variant="primary", elem_id="invert")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[photo], label="Examples")
                aligned = gr.Image(label="Aligned crop", format="png", interactive=False, height=160,
                                   elem_id="aligned")
            with gr.Column(scale=2):
                status = gr.Markdown("No photo inverted yet.", elem_id="status")
                with gr.Row():
                    view = gr.Image(label=f"{model.name}", format="png", interactive=False, height=320,
                                    elem_id="view")
                    teacher_view = gr.Image(label=f"teacher: {teacher_name}", format="png", interactive=False,
                                            height=320, visible=False, elem_id="teacher-view")
                with gr.Row():
                    yaw = gr.Slider(-YAW_RANGE, YAW_RANGE, 0, step=1, label="Yaw (degrees)", elem_id="yaw")
                    pitch = gr.Slider(-PITCH_RANGE, PITCH_RANGE, 0, step=1, label="Pitch (degrees)", elem_id="pitch")
                sliders = []
                for first in range(0, len(directions), SLIDERS_PER_ROW):
                    with gr.Row():
                        sliders += [gr.Slider(-slider_range(d), slider_range(d), 0, step=0.05, label=d.attribute,
                                              elem_id=f"direction-{d.attribute}")
                                    for d in directions[first:first + SLIDERS_PER_ROW]]
                if not directions:
                    gr.Markdown("No directions are shipped for this model yet (`editkit directions list`).")
                with_teacher = gr.Checkbox(label=f"Show the teacher ({teacher_name}) beside the student",
                                           visible=teacher_name is not None, elem_id="with-teacher")
                export_button = gr.Button("Prepare downloads: latent, images, orbit video", elem_id="export")
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, height=160,
                                elem_id="files")

        view_inputs = [state, yaw, pitch, with_teacher, *sliders]
        invert_button.click(
            as_message(invert_event), inputs=[photo], outputs=[state, aligned, yaw, pitch, *sliders, status],
            preprocess=False, api_name="invert", concurrency_id="heavy", concurrency_limit=limits.inversions,
            show_progress_on=[aligned, status],
        ).success(as_message(render_event), inputs=view_inputs, outputs=[view, teacher_view], api_name=False,
                  concurrency_id="render", concurrency_limit=limits.renders)
        gr.on([yaw.input, pitch.input, with_teacher.input, *[s.input for s in sliders]], as_message(render_event),
              inputs=view_inputs, outputs=[view, teacher_view], api_name="render", trigger_mode="always_last",
              show_progress="hidden", concurrency_id="render", concurrency_limit=limits.renders)
        export_button.click(as_message(export_event), inputs=view_inputs, outputs=[files], api_name="export",
                            concurrency_id="heavy", concurrency_limit=limits.inversions)
    app.queue(max_size=limits.queue_size)
    app.editkit_limits = limits  # launch() passes the upload limit on to Gradio
    return app


def launch(app, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve a `build_app` page on host:port (block=False returns at once; `app.close()` stops it)."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                              font_mono=["ui-monospace", "monospace"])
    return app.launch(server_name=host, server_port=port, max_file_size=int(app.editkit_limits.max_upload_mb * 1e6),
                      show_error=True, prevent_thread_lock=not block, quiet=not block, ssr_mode=False, theme=theme,
                      css=CSS)
