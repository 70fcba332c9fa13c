"""Latency of one slider update of the web demo: the update callback alone, and what a user waits for in a browser.

    .venv/bin/python benchmarks/demo_latency.py [--model NAME_OR_PATH] [--runs 30] [--threads 1] [--no-browser]

Without --model it serves what `editkit demo` serves (demo-student, or demo-teacher while no student is
registered). Timed, batch 1, at the model's resolution (128 px for the demo models):

* `callback`: `editkit.demo.Demo.render`, what the page runs on every slider move: add strength x direction for
  every shipped direction (all non-zero), render at a new yaw/pitch, convert to uint8; also with the teacher
  beside the student where the model has one;
* `browser`: headless Chromium (Debian's /usr/bin/chromium) on the running page at 127.0.0.1: from setting the yaw
  slider to the new image being loaded in the page (Gradio's queue, the PNG it writes, its event stream, the image
  request);
* `browser, empty callback`: the same on a one-slider Gradio page whose callback returns a fixed 128 px image: the
  floor that Gradio and the browser add to every update, whatever the model.

Each run moves to a new view; a few warm-up runs are not counted. Reported: median and range of wall time in
milliseconds, and for the callback the median process CPU time. The browser shares the machine's cores with the
server, as it would for a user on the same machine.
"""

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editkit import cameras  # noqa: E402
from editkit.demo import EXAMPLES_DIR, Demo, Limits, build_app, launch, load_models  # noqa: E402
from editkit.inversion import Settings  # noqa: E402

WARMUP = 3
CHROMIUM = "/usr/bin/chromium"
NEW_IMAGE = ("src => { const i = document.querySelector('#view img');"
             " return i && i.src !== src && i.complete && i.naturalWidth > 0; }")


def views(runs: int):
    """(yaw, pitch) of every run: a sweep where each view differs from the one before."""
    return [(-30 + 60 * (i % 7) / 6, -10 + 20 * (i % 5) / 4) for i in range(runs + WARMUP)]


def timed(call, runs: int) -> dict:
    """Wall and CPU milliseconds of call(yaw, pitch) over the runs (warm-up excluded)."""
    wall, cpu = [], []
    for i, (yaw, pitch) in enumerate(views(runs)):
        w0, c0 = time.perf_counter(), time.process_time()
        call(yaw, pitch)
        if i >= WARMUP:
            wall.append(1000 * (time.perf_counter() - w0))
            cpu.append(1000 * (time.process_time() - c0))
    return {"median": statistics.median(wall), "min": min(wall), "max": max(wall), "cpu": statistics.median(cpu)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_updates(app, runs: int, photo=None, with_teacher=False) -> dict:
    """Serve `app`, open it in Chromium (inverting `photo` first, if given) and time yaw slider updates."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    launch(app, port=port, block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            if photo is not None:
                page.locator("#photo input[type=file]").set_input_files(photo)
                page.locator("#photo img").wait_for()
                page.get_by_role("button", name="Invert", exact=True).click()
                page.locator("#view img").wait_for(timeout=600_000)
                if with_teacher:
                    page.locator("#with-teacher input").check()
                    page.locator("#teacher-view img").wait_for(timeout=600_000)
            yaw = page.locator("#yaw input[type=range]")

            def update(y, _):
                src = page.locator("#view img").get_attribute("src") if page.locator("#view img").count() else ""
                yaw.fill(str(round(y)))
                page.wait_for_function(NEW_IMAGE, arg=src, polling=5, timeout=600_000)

            result = timed(update, runs)
            browser.close()
    finally:
        app.close()
    return result


def floor_app():
    """A one-slider Gradio page whose callback costs nothing (same ids as the demo's yaw slider and view)."""
    import gradio as gr

    image = np.zeros((128, 128, 3), np.uint8)
    with gr.Blocks(analytics_enabled=False) as app:
        yaw = gr.Slider(-45, 45, 0, step=1, elem_id="yaw")
        view = gr.Image(format="png", elem_id="view")
        yaw.input(lambda y: image + np.uint8(y + 45), yaw, view, trigger_mode="always_last", show_progress="hidden")
    app.queue()
    app.editkit_limits = Limits()  # what launch() reads
    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="registry name or weights file (default: what `editkit demo` serves)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--no-browser", action="store_true", help="time the callback only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_models(args.model)
    demo = Demo(model, Settings(steps=1))
    G = model.G
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), cameras.frontal_label())
    state = {"ws": ws.numpy()}
    strengths = [0.5] * len(model.directions)
    rows = [("callback", "student", timed(lambda y, p: demo.render(state, strengths, y, p), args.runs))]
    if model.teacher is not None:
        rows.append(("callback", "student + teacher",
                     timed(lambda y, p: demo.render(state, strengths, y, p, with_teacher=True), args.runs)))

    if not args.no_browser and Path(CHROMIUM).is_file():
        photo = EXAMPLES_DIR / "synthetic_00.png"
        for with_teacher in [False, True] if model.teacher is not None else [False]:
            app = build_app(model, Settings(steps=1), examples=[])
            rows.append(("browser", "student + teacher" if with_teacher else "student",
                         browser_updates(app, args.runs, photo, with_teacher)))
        rows.append(("browser, empty callback", "none", browser_updates(floor_app(), args.runs)))
    elif not args.no_browser:
        print(f"{CHROMIUM} not found: browser rows skipped (Debian package 'chromium')")

    print(f"\nmodel {model.name} ({type(G).__name__}, {G.img_resolution} px), {len(model.directions)} directions, "
          f"{args.threads} torch thread(s), {args.runs} runs\n")
    print("| what | renders | median ms | range ms | CPU ms (median) |")
    print("|---|---|---|---|---|")
    for what, renders, t in rows:
        cpu = f"{t['cpu']:.1f}" if what == "callback" else "-"
        print(f"| {what} | {renders} | {t['median']:.1f} | {t['min']:.1f}-{t['max']:.1f} | {cpu} |")


if __name__ == "__main__":
    main()
