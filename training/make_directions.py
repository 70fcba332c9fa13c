"""Fit the shipped directions of a demo model to the demo world's ground truth and register them.

    python -m training.make_directions --model demo-teacher            # default attributes, 20000 samples
    python -m training.make_directions --model demo-teacher --attrs smile id00 --force

Every z of the demo teacher decodes to known head parameters (`training.synthetic.latent.params_from_z`), so the
labels are exact and no rendering is needed: latents are mapped untruncated (psi 1, the labels belong to z) and a
linear SVM (editkit.editing.supervised) separates the top and bottom quarter of each attribute in W. The files go
to checkpoints/directions/<model>/<attribute>.npy (+ .json) and into checkpoints/directions/registry.json, where
`editkit directions list` and `editkit edit --attr NAME` find them; a student whose registry entry names this
teacher uses them too.
"""

import argparse
import shlex
import sys

import numpy as np

from editkit.checkpoints import load_generator
from editkit.editing.registry import register_direction
from editkit.editing.supervised import fit_direction, sample_latents
from editkit.errors import EditkitError
from editkit.latents import model_record
from training.synthetic.head_model import PARAM_NAMES, HeadParams
from training.synthetic.latent import params_from_z


def _mean_of(*names):
    return lambda p: p[:, [HeadParams.index(n) for n in names]].mean(1)


# derived attribute -> the head parameters it averages
PARTS = {"smile": ("smile_l", "smile_r"), "eyes_closed": ("blink_l", "blink_r")}
# attribute -> (labels from head parameters (N, SIZE), one line for the registry)
DERIVED = {
    "smile": (_mean_of(*PARTS["smile"]), "smile (mean of the left and right smile units)"),
    "eyes_closed": (_mean_of(*PARTS["eyes_closed"]), "eyes closed (mean of the blink units)"),
}
DEFAULT_ATTRIBUTES = ("smile", "jaw_open", "eyes_closed", "brow_raise", "id00", "id01", "id02", "id03", "id04",
                      "skin_tone", "hair_color")


def world_labels(attribute: str, params: np.ndarray) -> tuple[np.ndarray, str]:
    """(labels (N,), description) of a derived attribute or any head parameter name (PARAM_NAMES)."""
    if attribute in DERIVED:
        labels, description = DERIVED[attribute]
        return labels(params), description
    if attribute not in PARAM_NAMES:
        raise EditkitError(f"unknown demo-world attribute '{attribute}' (known: {', '.join(DERIVED)}, "
                           "id00..id39 and the expression, appearance and light parameters)")
    return params[:, HeadParams.index(attribute)], f"head parameter {attribute}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo-teacher", help="registered demo model (default %(default)s)")
    parser.add_argument("--attrs", nargs="+", default=list(DEFAULT_ATTRIBUTES), help="attributes to fit")
    parser.add_argument("--n", type=int, default=20000, help="latents sampled (default %(default)s)")
    parser.add_argument("--method", choices=["svm", "logistic"], default="svm")
    parser.add_argument("--fraction", type=float, default=0.25, help="top/bottom share used as classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace registered directions")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "training.make_directions", *(sys.argv[1:] if argv is None else argv)])
    try:
        G = load_generator(args.model)
        sha = model_record(args.model)["sha256"]
        z, ws = sample_latents(G, args.n, args.seed, truncation_psi=1.0)
        params = params_from_z(z)
        print("| attribute | held-out accuracy | held-out correlation | file |\n|---|---|---|---|")
        for attribute in args.attrs:
            labels, description = world_labels(attribute, params)
            direction = fit_direction(
                ws, labels, attribute, args.method, fraction=args.fraction, seed=args.seed, model=args.model,
                model_sha256=sha, data={"labels": "demo-world ground truth (training.synthetic.latent.params_from_z)",
                                        "truncation_psi": 1.0,
                                        "command": command})
            path = register_direction(direction, args.model, description, force=args.force)
            print(f"| {attribute} | {direction.accuracy:.3f} | {direction.data['heldout_correlation']:.3f} | "
                  f"{path} |", flush=True)
    except EditkitError as e:
        sys.exit(f"make_directions: error: {e}")


if __name__ == "__main__":
    main()
