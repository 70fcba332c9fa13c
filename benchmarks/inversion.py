"""Time one inversion step (render, loss, backward, Adam) through the student and the teacher, per LPIPS backbone.

    python benchmarks/inversion.py [--teacher NAME_OR_PATH] [--student NAME_OR_PATH] [--official] [--repeats 10]
        [--threads 1]

Without models it times random networks of the demo configurations (training/fit_teacher.py's "demo" teacher and
`Student.from_teacher` of it), with `--official` of EG3D's FFHQ 512 configuration (what a user with official
weights inverts through) and its default student: speed does not depend on the weights. Reported per
configuration: median and range of wall time and of process CPU time per step; the generator alone (forward +
backward with respect to ws) and the loss network alone (forward + backward with respect to the image) are timed
the same way. Configurations are interleaved (round robin) so that load from other processes hits them alike.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editkit import cameras, checkpoints  # noqa: E402
from editkit.inversion import Objective, Settings, render  # noqa: E402
from editkit.perceptual import LPIPS  # noqa: E402


def generators(args) -> dict:
    """{'student': G_S, 'teacher': G_T} from the arguments, random demo-config networks where not given."""
    if args.teacher:
        teacher = checkpoints.load_generator(args.teacher)
    elif args.official:
        from editkit.models.eg3d import TriPlaneGenerator
        from editkit.models.eg3d.configs import ffhq512_kwargs

        torch.manual_seed(0)
        teacher = TriPlaneGenerator(**ffhq512_kwargs()).eval()
        teacher.neural_rendering_resolution = 128  # as the FFHQ 512 model renders
    else:
        from training.fit_teacher import CONFIGS, build_teacher

        torch.manual_seed(0)
        teacher = build_teacher(CONFIGS["demo"]).eval()
    if args.student:
        student = checkpoints.load_generator(args.student)
    else:
        from editkit.models.student import Student

        student = Student.from_teacher(teacher).eval()
    return {"student": student, "teacher": teacher}


def step_function(G, perceptual, kind):
    """A closure doing one timed unit of work: 'step' (full inversion step), 'generator' or 'loss' alone."""
    label = cameras.make_label(15.0, 5.0)
    r = G.img_resolution
    target = torch.rand(1, 3, r, r) * 2 - 1
    ws = G.w_avg.expand(1, G.num_ws, -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([ws], lr=1e-3)
    objective = Objective(target, torch.ones(1, 1, r, r), perceptual, Settings())
    G.requires_grad_(False)

    def step():
        if kind == "loss":
            image = target.clone().requires_grad_(True)
            perceptual(image, target.flip(-1)).sum().backward()
            return
        image = render(G, ws, label)
        loss = objective(image)["total"].sum() if kind == "step" else image.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="teacher model (registry name or file); default: random demo config")
    parser.add_argument("--student", help="student model (registry name or file); default: from the teacher")
    parser.add_argument("--official", action="store_true",
                        help="random networks of EG3D's FFHQ 512 configuration instead of the demo one")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per configuration (after 2 warm-ups)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the clean measure)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets = generators(args)
    losses = {net: LPIPS(net) for net in ("alex", "vgg")}
    configs = {}
    for name, G in nets.items():
        configs[f"{name} alone"] = step_function(G, losses["alex"], "generator")
        for net, perceptual in losses.items():
            configs[f"{name} + LPIPS-{net}"] = step_function(G, perceptual, "step")
    for net, perceptual in losses.items():
        configs[f"LPIPS-{net} alone"] = step_function(nets["student"], perceptual, "loss")
    times = {k: ([], []) for k in configs}
    for i in range(args.repeats + 2):
        for name, fn in configs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if i >= 2:
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    resolution = nets["student"].img_resolution
    print(f"one inversion step at {resolution} px (LPIPS at {min(resolution, 256)} px), {args.threads} thread(s), "
          f"{args.repeats} calls each, interleaved")
    print(f"{'configuration':32} {'wall ms (median, min-max)':>28} {'CPU ms (median, min-max)':>28}")
    for name, (wall, cpu) in times.items():
        cells = [f"{statistics.median(t) * 1e3:8.1f} ({min(t) * 1e3:.0f}-{max(t) * 1e3:.0f})" for t in (wall, cpu)]
        print(f"{name:32} {cells[0]:>28} {cells[1]:>28}")


if __name__ == "__main__":
    main()
