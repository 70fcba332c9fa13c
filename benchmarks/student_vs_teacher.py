"""Student vs teacher on this CPU, batch 1: time per image, peak memory, FLOPs, one inversion step, where the
teacher's time goes, and the student's width trade-off. Each network runs in its own subprocess.

    nice -n 15 .venv/bin/python benchmarks/student_vs_teacher.py              # demo and ffhq512, random weights
    .venv/bin/python benchmarks/student_vs_teacher.py --configs demo --teacher demo-teacher \
        --student runs/s2/student.safetensors                                 # also a trained student

Method. Random weights (seed 0) unless --teacher/--student give trained ones; frontal conditioning camera,
render camera at yaw 20 degrees. Time: one untimed pass (which also counts FLOPs with
torch.utils.flop_counter.FlopCounterMode: matmuls and convolutions only, so the renderer's element-wise work is
not in it), then --runs timed `synthesis` calls under torch.no_grad(); process CPU time is the main number (robust
on a shared machine with --threads 1), wall time beside it. Memory: tracemalloc does not see torch's allocations,
so the script reads the kernel's counters: the worker's resident set (VmRSS) once the network is built, and its
peak (VmHWM, reset through /proc/self/clear_refs) during the first render and during the inversion steps;
"peak" is the whole process (torch and its libraries, weights, activations), "added" is peak minus the resident
set before the first render (what running the network costs on top of holding it). A student's worker never
allocates the teacher's weights (its configuration is read from a teacher built on the meta device). Inversion
step: W+ (1, num_ws, w_dim) with requires_grad, synthesis, L1 to a fixed image, backward (weights frozen).
Teacher split: forward hooks time the backbone, the volume renderer and the upsampler.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from editkit import checkpoints  # noqa: E402
from editkit.cameras import frontal_label, make_label  # noqa: E402
from editkit.models.eg3d import TriPlaneGenerator  # noqa: E402
from editkit.models.eg3d.configs import FFHQ512_NEURAL_RENDERING_RESOLUTION, ffhq512_kwargs  # noqa: E402
from editkit.models.student import CHANNELS_AT_OUTPUT, DEFAULT_WIDTH, Student  # noqa: E402

WIDTHS = (1.0, 0.5, 0.25)
TEACHER_PARTS = {"backbone": "backbone.synthesis", "rendering": "renderer", "upsampler": "superresolution"}


def build_teacher(config: str, teacher_path=None):
    """The teacher of a configuration: demo (training/fit_teacher.py's shipped config) or ffhq512."""
    if teacher_path:
        return checkpoints.load_generator(teacher_path)
    torch.manual_seed(0)
    if config == "ffhq512":
        G = TriPlaneGenerator(**ffhq512_kwargs())
        G.neural_rendering_resolution = FFHQ512_NEURAL_RENDERING_RESOLUTION
        return G
    from training.fit_teacher import CONFIGS, build_teacher as build_demo_teacher

    return build_demo_teacher(CONFIGS["demo"])


def build_network(config: str, model: str, teacher_path=None, student_path=None):
    """'teacher', 'student:<width>' (from the teacher, random high-resolution layers) or 'checkpoint'."""
    if model == "checkpoint":
        return checkpoints.load_generator(student_path)
    if model == "teacher":
        return build_teacher(config, teacher_path)
    if teacher_path:
        G = build_teacher(config, teacher_path)
    else:
        with torch.device("meta"):  # only the teacher's configuration is needed: allocate none of its weights
            G = build_teacher(config)
    torch.manual_seed(0)
    return Student(**Student.config_from_teacher(G, width=float(model.split(":")[1])))


def memory_gb(field: str) -> float:
    """VmRSS or VmHWM of this process in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2 ** 20
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> float:
    """Reset VmHWM to the current RSS; returns that RSS in GB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return memory_gb("VmRSS")


class PartTimer:
    """Forward hooks that add up CPU time and FLOPs spent in named submodules."""

    def __init__(self, net, parts: dict):
        self.seconds = {name: 0.0 for name in parts}
        self.flops = {name: 0 for name in parts}
        self.counter = None
        for name, path in parts.items():
            module = net.get_submodule(path)
            module.register_forward_pre_hook(lambda m, a, name=name: self.start(name))
            module.register_forward_hook(lambda m, a, out, name=name: self.stop(name))
        self.started = {}

    def start(self, name):
        self.started[name] = (time.process_time(), self.counter.get_total_flops() if self.counter else 0)

    def stop(self, name):
        seconds, flops = self.started.pop(name)
        self.seconds[name] += time.process_time() - seconds
        if self.counter:
            self.flops[name] += self.counter.get_total_flops() - flops

    def take(self) -> dict:
        out = dict(self.seconds)
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return out


def worker(args) -> dict:
    """Measure one network; returns the numbers as a dict (printed as JSON)."""
    torch.set_num_threads(args.threads)
    net = build_network(args.config, args.worker, args.teacher, args.student).eval().requires_grad_(False)
    timer = PartTimer(net, TEACHER_PARTS) if isinstance(net, TriPlaneGenerator) else None
    z = torch.randn(1, net.z_dim, generator=torch.Generator().manual_seed(0))
    c = make_label(20.0, 0.0)
    with torch.no_grad():
        ws = net.mapping(z, frontal_label())
        before = reset_peak()  # memory: the first render (also the warm-up, with FLOPs counted)
        with FlopCounterMode(display=False) as counter:
            if timer:
                timer.counter = counter
            net.synthesis(ws, c)
        peak = memory_gb("VmHWM")
        if timer:
            timer.counter = None
            timer.take()
        cpu, wall, parts = [], [], []
        for _ in range(args.runs):
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            net.synthesis(ws, c)
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start_wall)
            if timer:
                parts.append(timer.take())
    target = torch.zeros(1, net.img_channels, net.img_resolution, net.img_resolution)
    reset_peak()
    inversion = []
    for _ in range(args.inversion_runs):
        latent = ws.clone().requires_grad_(True)
        start = time.process_time()
        loss = (net.synthesis(latent, c)["image"] - target).abs().mean()
        loss.backward()
        inversion.append(time.process_time() - start)
    result = {"params": sum(p.numel() for p in net.parameters()), "flops": counter.get_total_flops(),
              "cpu": cpu, "wall": wall, "rss_before": before, "peak": peak, "inversion": inversion,
              "inversion_peak": memory_gb("VmHWM")}
    if timer:
        result["split"] = {name: statistics.median(p[name] for p in parts) for name in TEACHER_PARTS}
        result["split_flops"] = timer.flops
    if isinstance(net, Student):
        result["channels"] = net.channels()
    return result


def measure(args, config: str, model: str) -> dict:
    command = [sys.executable, __file__, "--worker", model, "--config", config, "--runs", str(args.runs),
               "--inversion-runs", str(args.inversion_runs), "--threads", str(args.threads)]
    for flag in ("teacher", "student"):
        if getattr(args, flag) and config == "demo":
            command += [f"--{flag}", str(getattr(args, flag))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode:
        sys.exit(f"{config} {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def label(model: str) -> str:
    if model == "teacher":
        return "teacher"
    if model == "checkpoint":
        return "student (checkpoint)"
    width = float(model.split(":")[1])
    return f"student width {width:g}" + (" (default)" if width == DEFAULT_WIDTH else "")


def report(config: str, results: dict) -> None:
    """Print the side-by-side, width and time-split tables of one configuration."""
    t = results["teacher"]
    t_cpu, t_inv = statistics.median(t["cpu"]), statistics.median(t["inversion"])
    print(f"\n### {config}\n")
    print("| network | parameters | GFLOP | CPU s/image (median, min-max) | wall s/image | speed-up | peak RSS GB "
          "(added) | memory ratio | inversion step CPU s | speed-up | inversion peak RSS GB (added) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, r in results.items():
        cpu, inv = statistics.median(r["cpu"]), statistics.median(r["inversion"])
        added, inv_added = r["peak"] - r["rss_before"], r["inversion_peak"] - r["rss_before"]
        print(f"| {label(model)} | {r['params'] / 1e6:.1f}M | {r['flops'] / 1e9:.1f} | {cpu:.3f} "
              f"({min(r['cpu']):.3f}-{max(r['cpu']):.3f}) | {statistics.median(r['wall']):.3f} | "
              f"{t_cpu / cpu:.1f}x | {r['peak']:.2f} ({added:.2f}) | {t['peak'] / r['peak']:.1f}x total, "
              f"{(t['peak'] - t['rss_before']) / max(added, 1e-3):.0f}x added | {inv:.3f} | {t_inv / inv:.1f}x | "
              f"{r['inversion_peak']:.2f} ({inv_added:.2f}) | {t['inversion_peak'] / r['inversion_peak']:.1f}x total, "
              f"{(t['inversion_peak'] - t['rss_before']) / max(inv_added, 1e-3):.0f}x added |")
    print(f"\nWidth trade-off ({config}; fidelity to the teacher is measured on trained students, see "
          "docs/student.md):\n")
    print("| width | channels 4 px -> output | parameters | GFLOP | CPU s/image | speed-up | fidelity (PSNR / LPIPS "
          "to the teacher) |")
    print("|---|---|---|---|---|---|---|")
    for model, r in results.items():
        if "channels" in r:
            width = model.split(":")[1] if ":" in model else "checkpoint"
            channels = "/".join(str(v) for v in r["channels"].values())
            cpu = statistics.median(r["cpu"])
            print(f"| {width} | {channels} | {r['params'] / 1e6:.1f}M | {r['flops'] / 1e9:.1f} | {cpu:.3f} | "
                  f"{t_cpu / cpu:.1f}x | - |")
    split = t["split"]
    total = sum(split.values())
    print(f"\nTeacher time split ({config}, CPU s, median; FLOPs from the counted pass):\n")
    print("| part | CPU s | share | GFLOP |")
    print("|---|---|---|---|")
    for name, seconds in split.items():
        print(f"| {name} | {seconds:.3f} | {seconds / total:.0%} | {t['split_flops'][name] / 1e9:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["demo", "ffhq512"], choices=["demo", "ffhq512"])
    parser.add_argument("--widths", nargs="+", type=float, default=list(WIDTHS))
    parser.add_argument("--teacher", help="trained teacher for the demo config (registry name or file)")
    parser.add_argument("--student", help="also measure this trained student (demo config)")
    parser.add_argument("--runs", type=int, default=3, help="timed renders per network")
    parser.add_argument("--inversion-runs", type=int, default=2, help="timed inversion steps per network")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, {args.runs} timed renders and "
          f"{args.inversion_runs} inversion steps per network; student width w = {CHANNELS_AT_OUTPUT}w channels "
          "at the output resolution")
    for config in args.configs:
        models = ["teacher"] + [f"student:{w:g}" for w in args.widths]
        if args.student and config == "demo":
            models.append("checkpoint")
        results = {}
        for model in models:
            results[model] = measure(args, config, model)
            print(f"  measured {config} {label(model)}", file=sys.stderr, flush=True)
        report(config, results)


if __name__ == "__main__":
    main()
