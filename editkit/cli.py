"""The `editkit` command line.

Each subcommand is two functions: `<name>_arguments(parser)` adds its options and `<name>(args)` runs it (its
docstring's first line is the help text). Register a new one with a line in COMMANDS. A user error
(`EditkitError`) prints `editkit: error: <message>` and exits with 2; anything else is a bug and exits with 1
(add --debug for the traceback).
"""

import argparse
import shlex
import sys
import traceback
import warnings
from pathlib import Path

from editkit import __version__
from editkit.editing import commands as editing_commands
from editkit.errors import EditkitError, EditkitWarning, one_line
from editkit.io import check_outputs


def convert_arguments(parser):
    parser.add_argument("src", type=Path, help="official EG3D network pickle (.pkl)")
    parser.add_argument("dst", type=Path, help="output weights (.safetensors); the .json config goes beside it")
    parser.add_argument("--network", choices=["G_ema", "G", "all"], default="G_ema",
                        help="which network to keep: G_ema (for generation), G, or all of G_ema, G and D "
                             "(default: %(default)s)")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as float16: half the file, loaded back as float32")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")


def convert(args):
    """Convert an official EG3D .pkl into editkit's safetensors + JSON format, safely."""
    from editkit import checkpoints

    if args.src.suffix != ".pkl":
        raise EditkitError(f"{args.src}: expected an official EG3D .pkl file")
    if args.dst.suffix != ".safetensors":
        raise EditkitError(f"{args.dst}: the output must end in .safetensors")
    check_outputs([args.dst, checkpoints.config_path(args.dst)], args.force)  # fail before the slow part
    records = checkpoints.read_official_records(args.src)
    training_set_kwargs = records.pop("training_set_kwargs")
    if args.network == "all":
        names = list(records)
    elif args.network in records:
        names = [args.network]
    else:
        raise EditkitError(f"{args.src}: holds no {args.network} (it has: {', '.join(records)}); "
                           "pick one with --network")
    networks = {name: checkpoints.network_from_record(records[name], args.src, name) for name in names}
    command = shlex.join(["editkit", "convert", str(args.src), str(args.dst), "--network", args.network,
                          *(["--half"] if args.half else [])])
    provenance = {"command": command, "data": training_set_kwargs,
                  "source": {"file": args.src.name, "sha256": checkpoints.sha256_file(args.src)}}
    checkpoints.save_model(args.dst, networks, provenance, overwrite=args.force, half=args.half)
    for name, module in networks.items():
        count = sum(p.numel() for p in module.parameters())
        print(f"{name}: {type(module).__name__}, {count:,} parameters")
    print(f"wrote {args.dst} and {checkpoints.config_path(args.dst)}")


def models_arguments(parser):
    """`editkit models` has no options of its own."""


def models(args):
    """List the models in the registry (checkpoints/registry.json)."""
    from editkit import checkpoints

    folder = checkpoints.checkpoints_dir()
    entries = checkpoints.read_registry(folder)
    if not entries:
        print(f"no models registered yet ({folder / 'registry.json'} is empty); "
              "`editkit convert` turns an official EG3D .pkl into a file you can load by path")
        return
    for name, entry in sorted(entries.items()):
        path = folder / entry.get("file", "")
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing"
        print(f"{name:24} {entry.get('kind', '?'):8} {size:>10}  {entry.get('description', '')}")


def evaluate_arguments(parser):
    parser.add_argument("--models", required=True,
                        help="comma-separated registry names or paths, each optionally labelled LABEL=PATH; the "
                             "first model's mapping makes the latents (e.g. demo-teacher,stage1=runs/s1/student."
                             "safetensors,demo-student)")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json, report.md, plots, samples")
    parser.add_argument("--id", action="store_true", help="identity across views (face-recognition embeddings)")
    parser.add_argument("--landmarks", action="store_true", help="landmark consistency (triangulated 68 landmarks)")
    parser.add_argument("--pose", action="store_true", help="pose accuracy (camera estimated from the image)")
    parser.add_argument("--fid", type=Path, metavar="REAL_DIR",
                        help="also FID/KID against this folder of real images (needs the Inception weights locally, "
                             "see editkit/metrics/fid.py)")
    parser.add_argument("--noise-floor", action="store_true",
                        help="also run the detector, pose estimator and ID network on demo-world ground truth")
    parser.add_argument("--noise-floor-n", type=int, default=50, help="heads for --noise-floor (default: %(default)s)")
    parser.add_argument("--n", type=int, default=200, help="latents (default: %(default)s)")
    parser.add_argument("--views", type=int, default=5, help="yaws per latent (default: %(default)s)")
    parser.add_argument("--yaw-range", type=float, default=35.0,
                        help="yaws are evenly spaced in [-R, R] degrees (default: %(default)s)")
    parser.add_argument("--pitch", type=float, default=0.0, help="pitch in degrees (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default: %(default)s)")
    parser.add_argument("--truncation", type=float, default=0.7, help="truncation psi (default: %(default)s)")
    parser.add_argument("--id-model", metavar="SPEC",
                        help="face-recognition weights: [arcface:|sface:|iresnet:|facenet:|dlib:]PATH, or 'dlib' "
                             "(default: $EDITKIT_ID_MODEL, else dlib's ResNet; see editkit/metrics/identity.py)")
    parser.add_argument("--samples", type=int, default=8, help="latents shown in the sample grids (default: 8)")
    parser.add_argument("--device", default="cpu", help="torch device for the generators (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing report in --out")


def evaluate(args):
    """Measure pose accuracy, landmark consistency, identity and speed of models side by side."""
    from editkit.evaluation import EvalConfig, run

    chosen = {"identity": args.id, "landmarks": args.landmarks, "pose": args.pose}
    if not any(chosen.values()):
        chosen = dict.fromkeys(chosen, True)  # none asked for: all three
    config = EvalConfig(
        models=[m.strip() for m in args.models.split(",") if m.strip()], n=args.n, views=args.views,
        yaw_range=args.yaw_range, pitch=args.pitch, seed=args.seed, truncation_psi=args.truncation,
        id_model=args.id_model, fid_real=str(args.fid) if args.fid else None, noise_floor=args.noise_floor,
        noise_floor_n=args.noise_floor_n, samples=args.samples, device=args.device, **chosen)
    written = run(config, args.out, force=args.force)
    print(f"wrote {len(written)} files to {args.out}: report.md, metrics.json, plots/, samples/")


def invert_arguments(parser):
    parser.add_argument("photos", type=Path, nargs="+", help="photos (.jpg, .png, ...) and/or folders of photos")
    parser.add_argument("--out", type=Path, required=True, help="output folder: one subfolder per photo")
    parser.add_argument("--model", help="registry name or .safetensors/.pkl file (default: demo-student, or "
                                        "demo-teacher with --generator teacher)")
    parser.add_argument("--generator", choices=["student", "teacher"], default=None,
                        help="invert through the student (default) or the teacher; with --model it must match")
    parser.add_argument("--steps", type=int, help="optimisation steps (default: editkit.inversion.Settings, "
                                                   "see docs/inversion.md)")
    parser.add_argument("--face-index", type=int, default=0, help="which face, largest first (default: 0)")
    parser.add_argument("--lpips", choices=["alex", "vgg"],
                        help="perceptual loss backbone (default: alex; vgg costs ~7x more on a CPU)")
    parser.add_argument("--no-camera-refinement", action="store_true",
                        help="keep the camera estimated from the landmarks")
    parser.add_argument("--pti", action="store_true", help="also fine-tune a copy of the generator around the "
                                                          "latent (pivotal tuning); saved as pti_generator.*")
    parser.add_argument("--batch", type=int, default=4, help="photos optimised together (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")


def invert(args):
    """Invert face photos into the generator's W+ space: aligned crop, camera, latent, reconstruction, views."""
    from editkit import checkpoints
    from editkit.faces import photo_files
    from editkit.images import load_image
    from editkit.inversion import Settings, generator_kind, invert_photos, output_files
    from editkit.latents import model_record

    files = photo_files(args.photos)
    folders = [args.out / f.stem for f in files]
    clash = next((f for f, d in zip(files, folders) if folders.count(d) > 1), None)
    if clash is not None:
        raise EditkitError(f"{clash}: two photos share the name '{clash.stem}' (each gets --out/<name>/); rename one")
    check_outputs([path for folder in folders for path in output_files(folder, args.pti)], args.force)
    if (args.steps is not None and args.steps < 1) or args.batch < 1 or args.face_index < 0:
        raise EditkitError("--steps and --batch must be at least 1 and --face-index at least 0")
    photos = [(f, load_image(f)) for f in files]  # every photo is read before the slow part
    name = args.model or f"demo-{args.generator or 'student'}"
    if args.model is None and name not in checkpoints.read_registry():
        raise EditkitError(f"no '{name}' model in the registry yet; pass --model NAME_OR_PATH (`editkit models` "
                           "lists the registered ones)")
    path = checkpoints.resolve_checkpoint(name)
    G = checkpoints.load_generator(path)
    if args.generator and generator_kind(G) != args.generator:
        raise EditkitError(f"{name} holds a {generator_kind(G)} ({type(G).__name__}), not a {args.generator}")
    model = model_record(name)
    given = {"steps": args.steps, "lpips": args.lpips}
    settings = Settings(**{k: v for k, v in given.items() if v is not None},
                        refine_camera=not args.no_camera_refinement, pti=args.pti)
    results = invert_photos(photos, G, settings, args.face_index, model, batch_size=args.batch)
    for folder, result in zip(folders, results):
        result.save(folder, force=args.force)
        record = result.record
        yaw, pitch = record["camera"]["yaw"], record["camera"]["pitch"]
        print(f"{result.source}: yaw {yaw:+.1f} pitch {pitch:+.1f} deg, LPIPS {record['losses']['lpips']:.3f}, "
              f"PSNR {record['losses']['psnr']:.1f} dB, {record['timings']['total']:.1f} s -> {folder}/")


def demo_arguments(parser):
    parser.add_argument("--model", help="registry name or .safetensors/.pkl file (default: demo-student; while it "
                                        "is not registered, demo-teacher with a notice)")
    parser.add_argument("--teacher", help="model shown beside the student on request (default: the teacher its "
                                          "registry entry or provenance names)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="inversion steps (default: editkit.inversion.Settings)")
    parser.add_argument("--max-upload-mb", type=float, help="largest photo file (default: editkit.demo.Limits, 10)")
    parser.add_argument("--max-side", type=int, help="largest photo side in pixels (default: Limits, 4096)")
    parser.add_argument("--concurrency", type=int,
                        help="inversions running at once; more users wait in the queue (default: Limits, 1)")


def demo(args):
    """Serve the web demo: upload a photo, invert it, edit it with sliders, turn the head, download the results."""
    from editkit.demo import Limits, build_app, launch, load_models
    from editkit.inversion import Settings

    given = {"steps": args.steps, "max_side": args.max_side, "inversions": args.concurrency,
             "max_upload_mb": args.max_upload_mb}
    if any(v is not None and v <= 0 for v in given.values()) or not 0 < args.port < 65536:
        raise EditkitError("--steps, --max-upload-mb, --max-side and --concurrency must be positive and --port "
                           "in 1..65535")
    model = load_models(args.model, args.teacher)
    settings = Settings() if args.steps is None else Settings(steps=args.steps)
    limits = Limits(**{k: v for k, v in given.items() if v is not None and k != "steps"})
    print(f"editkit demo: {model.name} with {len(model.directions)} direction(s)"
          f"{f', teacher {model.teacher_name}' if model.teacher is not None else ''}; "
          f"open http://{args.host}:{args.port}/ (Ctrl+C stops it)")
    try:
        launch(build_app(model, settings, limits), args.host, args.port)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise EditkitError(f"cannot serve on {args.host}:{args.port}: {one_line(e)}") from None


# name -> (add arguments, run); the run function's docstring is the help text.
COMMANDS = {
    "convert": (convert_arguments, convert),
    "models": (models_arguments, models),
    "invert": (invert_arguments, invert),
    "directions": (editing_commands.directions_arguments, editing_commands.directions),
    "edit": (editing_commands.edit_arguments, editing_commands.edit),
    "eval": (evaluate_arguments, evaluate),
    "demo": (demo_arguments, demo),
}


def build_parser():
    """The argument parser with every registered subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of unexpected errors")
    parser = argparse.ArgumentParser(prog="editkit", parents=[common],
                                     description="Fast 3D-aware face editing with EG3D and a distilled student.")
    parser.add_argument("--version", action="version", version=f"editkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run) in COMMANDS.items():
        summary = run.__doc__.strip().splitlines()[0]
        command = sub.add_parser(name, parents=[common], help=summary, description=summary)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 bug, 2 user error)."""
    args = build_parser().parse_args(argv)
    python_show_warning = warnings.showwarning

    def show_warning(message, category, *rest, **kwargs):
        """EditkitWarnings as one line (`editkit: warning: ...`); other warnings as Python prints them."""
        if issubclass(category, EditkitWarning):
            print(f"editkit: warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            python_show_warning(message, category, *rest, **kwargs)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            args.run(args)
    except EditkitError as e:
        print(f"editkit: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's fault: keep it short unless asked
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            print(f"editkit: internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug "
                  "for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
