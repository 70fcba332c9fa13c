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
from pathlib import Path

from editkit import __version__
from editkit.errors import EditkitError, OutputExistsError


def convert_arguments(parser):
    parser.add_argument("src", type=Path, help="official EG3D network pickle (.pkl)")
    parser.add_argument("dst", type=Path, help="output weights (.safetensors); the .json config goes beside it")
    parser.add_argument("--network", choices=["G_ema", "G", "all"], default="G_ema",
                        help="which network to keep: G_ema (for generation), G, or all of G_ema, G and D "
                             "(default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")


def convert(args):
    """Convert an official EG3D .pkl into editkit's safetensors + JSON format, safely."""
    from editkit import checkpoints

    if args.src.suffix != ".pkl":
        raise EditkitError(f"{args.src}: expected an official EG3D .pkl file")
    if args.dst.suffix != ".safetensors":
        raise EditkitError(f"{args.dst}: the output must end in .safetensors")
    for out in (args.dst, checkpoints.config_path(args.dst)):  # fail before the slow part
        if out.exists() and not args.force:
            raise OutputExistsError(f"{out} already exists; use --force to overwrite it")
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
    command = shlex.join(["editkit", "convert", str(args.src), str(args.dst), "--network", args.network])
    provenance = {"command": command, "data": training_set_kwargs,
                  "source": {"file": args.src.name, "sha256": checkpoints.sha256_file(args.src)}}
    checkpoints.save_model(args.dst, networks, provenance, overwrite=args.force)
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


# name -> (add arguments, run); the run function's docstring is the help text.
COMMANDS = {
    "convert": (convert_arguments, convert),
    "models": (models_arguments, models),
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
    try:
        args.run(args)
    except EditkitError as e:
        print(f"editkit: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's fault: keep it short unless asked
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            print(f"editkit: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
