"""The `editkit edit` and `editkit directions ...` subcommands (registered in editkit/cli.py)."""

import argparse
import shlex
import sys
from pathlib import Path

from editkit.errors import EditkitError


class _AddEdit(argparse.Action):
    """--attr NAME / --direction FILE: start a new edit (strength 1 until a --strength follows)."""

    def __call__(self, parser, namespace, value, option_string=None):
        from editkit.editing.edit import EditSpec

        specs = list(getattr(namespace, "edits", None) or [])
        specs.append(EditSpec(file=Path(value)) if self.dest == "direction" else EditSpec(attribute=value))
        namespace.edits = specs


class _Strength(argparse.Action):
    """--strength X: the strength of the edit named just before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        specs = getattr(namespace, "edits", None)
        if not specs:
            parser.error("--strength must follow an --attr or --direction")
        specs[-1].strength = value


def edit_arguments(parser):
    parser.add_argument("latent", type=Path, help="latent .npy from `editkit invert`, or the folder holding latent.npy")
    parser.add_argument("--attr", action=_AddEdit, metavar="NAME",
                        help="a shipped direction (see `editkit directions list`); repeat for several edits")
    parser.add_argument("--direction", action=_AddEdit, metavar="FILE.npy",
                        help="a direction file (ours or a published (1,14,512)/(1,512) one); repeatable")
    parser.add_argument("--strength", action=_Strength, type=float, metavar="X",
                        help="strength of the edit named just before (default 1.0; negative reverses it)")
    parser.add_argument("--yaw", type=float, help="view yaw in degrees, > 0 turns the camera to +x "
                                                  "(default: the latent's own view)")
    parser.add_argument("--pitch", type=float, help="view pitch in degrees, > 0 looks from above (default: latent's)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--orbit", action="store_true", help="also write orbit.mp4 and orbit.gif (a yaw/pitch orbit)")
    parser.add_argument("--frames", type=int, default=48, help="orbit frames (default %(default)s, 24 fps)")
    parser.add_argument("--grid", action="store_true", help="also write grid.png: strength x yaw")
    parser.add_argument("--layers", help="edit only these W+ layers, e.g. 0-7 or 0,2,4-6 (default: all)")
    parser.add_argument("--keep-identity", action="append", default=[], metavar="ATTR",
                        help="conditional editing: project ATTR's direction (a shipped name or a .npy file) out "
                             "of every edit so ATTR (an identity parameter, another attribute) stays put; repeatable")
    parser.add_argument("--generator", help="render with 'teacher', 'student' (the registered pair sharing the "
                                            "latent's w space) or a model name/path (default: the latent's model)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.set_defaults(edits=[])


def edit(args):
    """Edit a latent along directions and render it from a new viewpoint (PNG, optional orbit and grid)."""
    from editkit.editing.edit import run_edit

    if args.frames < 2:
        raise EditkitError("--frames must be at least 2")
    result = run_edit(args.latent, args.edits, args.out, yaw=args.yaw, pitch=args.pitch, orbit=args.orbit,
                      want_grid=args.grid, layers=args.layers, keep=args.keep_identity, generator=args.generator,
                      frames=args.frames, force=args.force)
    print(f"edited view rendered in {result.pop('render_ms'):.0f} ms")
    for path in result.values():
        print(f"wrote {path}")


# ------------------------------------------------------------------------------------------- editkit directions


def _model_sha(model):
    from editkit.latents import model_record

    return model_record(model)["sha256"]


def _write(direction, args, model):
    """Save a direction to --out, or register it as a shipped direction of `model` with --register."""
    from editkit.editing.directions import save_direction
    from editkit.editing.registry import register_direction

    direction.data.setdefault("command", shlex.join(["editkit", *sys.argv[1:]]))
    if args.register:
        return register_direction(direction, model, args.description, force=args.force)
    return save_direction(args.out, direction, force=args.force)


def _check_out(args):
    """Fail before the slow part: an --out that is not .npy, exists (without --force) or cannot be written."""
    from editkit.editing.directions import direction_outputs
    from editkit.io import check_outputs

    if args.out is not None:
        check_outputs(direction_outputs(args.out), args.force)


def _output_arguments(parser):
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="direction file to write (.npy; its .json goes beside it)")
    where.add_argument("--register", action="store_true",
                       help="save into the checkpoints folder's directions/ and list it in its registry")
    parser.add_argument("--description", default="", help="one line for the registry (with --register)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files or registry entries")


def fit_arguments(parser):
    parser.add_argument("--model", required=True, help="model name (see `editkit models`) or .safetensors/.pkl path")
    parser.add_argument("--attr", required=True, help="attribute scored from dlib landmarks: smile, jaw_open, "
                                                      "eyes_open, eyes_closed, brow_raise")
    parser.add_argument("--n", type=int, default=2000, help="samples to render and score (default %(default)s)")
    parser.add_argument("--method", choices=["svm", "logistic"], default="svm",
                        help="linear SVM (squared hinge) or logistic regression (default %(default)s)")
    parser.add_argument("--space", choices=["w", "w+"], default="w", help="fit in W or per-layer W+ (default w)")
    parser.add_argument("--layers", help="layers the direction acts on, e.g. 0-7 (default: all)")
    parser.add_argument("--fraction", type=float, default=0.25,
                        help="top and bottom share of scores used as the two classes (default %(default)s)")
    parser.add_argument("--truncation", type=float, default=0.7,
                        help="truncation psi of the samples; the boundary's normal does not depend on it "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8, help="render batch size (default %(default)s)")
    _output_arguments(parser)


def fit(args):
    """Fit an InterFaceGAN-style direction to landmark scores of rendered samples."""
    import numpy as np

    from editkit.checkpoints import load_generator
    from editkit.editing.directions import parse_layers
    from editkit.editing.supervised import fit_direction, landmark_scores, sample_latents

    if args.n < 20 or not 0 < args.fraction <= 0.5:
        raise EditkitError("need --n >= 20 and 0 < --fraction <= 0.5")
    _check_out(args)
    G = load_generator(args.model)
    layers = None if args.layers is None else parse_layers(args.layers, G.num_ws)
    _, ws = sample_latents(G, args.n, args.seed, args.truncation)
    scores = landmark_scores(G, ws, args.attr, batch=args.batch)
    found = int(np.isfinite(scores).sum())
    if found < 20:
        raise EditkitError(f"dlib found a face in only {found} of {args.n} samples of '{args.model}': too few "
                           "to fit a direction (is the model a face model? try more samples or --truncation 0.5)")
    direction = fit_direction(ws, scores, args.attr, args.method, args.space, layers, args.fraction, seed=args.seed,
                              model=str(args.model), model_sha256=_model_sha(args.model),
                              data={"labels": "dlib 68-landmark score", "truncation_psi": args.truncation})
    path = _write(direction, args, str(args.model))
    print(f"faces found in {found}/{args.n} samples; held-out accuracy {direction.accuracy:.3f}, "
          f"correlation {direction.data['heldout_correlation']:.3f}")
    print(f"wrote {path}")


def sefa_arguments(parser):
    parser.add_argument("--model", required=True, help="model name or .safetensors/.pkl path")
    parser.add_argument("--k", type=int, default=5, help="number of components (default %(default)s)")
    parser.add_argument("--layers", help="use (and edit) only these layers' affines, e.g. 0-5 (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for sefa_00.npy, sefa_01.npy, ...")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def sefa(args):
    """Export the top-k SeFa directions (closed form from the style affine weights)."""
    from editkit.checkpoints import load_generator
    from editkit.editing.directions import direction_outputs, parse_layers, save_direction
    from editkit.editing.sefa import sefa_directions
    from editkit.io import check_outputs

    G = load_generator(args.model)
    layers = None if args.layers is None else parse_layers(args.layers, G.num_ws)
    directions = sefa_directions(G, args.k, layers, model=str(args.model), model_sha256=_model_sha(args.model))
    paths = [args.out / f"{d.attribute}.npy" for d in directions]
    check_outputs([out for p in paths for out in direction_outputs(p)], args.force)
    for direction, path in zip(directions, paths):
        save_direction(path, direction, force=args.force)
        print(f"wrote {path} (eigenvalue {direction.data['eigenvalue']:.3f}, "
              f"{direction.data['share_of_variance']:.1%} of the total)")


def import_arguments(parser):
    parser.add_argument("src", type=Path, help="published direction .npy: (1,14,512), (14,512), (1,512) or (512,)")
    parser.add_argument("--attribute", help="attribute name (default: the file name)")
    parser.add_argument("--model", help="check the shape against this model and record it")
    _output_arguments(parser)


def import_(args):
    """Validate a published direction file and save it in editkit's format (npy + JSON)."""
    from dataclasses import replace

    from editkit.checkpoints import load_generator
    from editkit.editing.directions import load_direction

    if args.register and not args.model:
        raise EditkitError("--register needs --model (the model the direction belongs to)")
    _check_out(args)
    num_ws = w_dim = None
    if args.model:
        G = load_generator(args.model)
        num_ws, w_dim = G.num_ws, G.w_dim
    direction = load_direction(args.src, num_ws, w_dim)
    direction = replace(direction, attribute=args.attribute or direction.attribute, model=args.model,
                        model_sha256=_model_sha(args.model) if args.model else None,
                        data={**direction.data, "imported_from": str(args.src)})
    print(f"{args.src}: {direction.vector.shape[0]} x {direction.w_dim}, norm per layer "
          f"{float((direction.vector ** 2).sum(-1).mean() ** 0.5):.3f}")
    print(f"wrote {_write(direction, args, args.model)}")


def list_arguments(parser):
    parser.add_argument("--model", help="only directions usable with this model")


def list_(args):
    """List the shipped directions (checkpoints/directions/registry.json)."""
    from editkit.editing.directions import format_layers
    from editkit.editing.registry import describe, directions_dir, read_directions_registry, related_models

    folder = directions_dir()
    entries = read_directions_registry(folder)
    if args.model:
        models = related_models(args.model)
        entries = [e for e in entries if e["model"] in models]
    if not entries:
        print(f"no directions registered{' for ' + args.model if args.model else ''} ({folder / 'registry.json'}); "
              "make one with `editkit directions fit ... --register`")
        return
    print(f"{'model':20} {'attribute':14} {'method':20} {'accuracy':>8}  layers  file")
    for entry in sorted(entries, key=lambda e: (e["model"], e["attribute"])):
        info = describe(entry, folder)
        accuracy = "-" if info.get("accuracy") is None else f"{info['accuracy']:.3f}"
        layers = format_layers(info.get("layers"))
        print(f"{entry['model']:20} {entry['attribute']:14} {str(info.get('method', '?')):20} {accuracy:>8}  "
              f"{layers:6}  {entry['file']}")


ACTIONS = {"fit": (fit_arguments, fit), "sefa": (sefa_arguments, sefa), "import": (import_arguments, import_),
           "list": (list_arguments, list_)}


def directions_arguments(parser):
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, (add_arguments, run) in ACTIONS.items():
        summary = run.__doc__.strip().splitlines()[0]
        action = actions.add_parser(name, help=summary, description=summary)
        action.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the full traceback of unexpected errors")
        add_arguments(action)
        action.set_defaults(action_run=run)


def directions(args):
    """Make, import and list latent directions (fit, sefa, import, list)."""
    args.action_run(args)
