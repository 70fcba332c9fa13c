"""``python -m training.distill``: distil an EG3D teacher into a student, or train the PC-GAN baseline.

    # stage 1: reconstruction of teacher renders (w from the teacher's mapping, wide pose distribution)
    python -m training.distill --teacher demo-teacher --stage 1 --out runs/s1 --steps 20000
    # ... also scoring how the student follows the teacher along the shipped edit directions
    python -m training.distill --teacher demo-teacher --stage 1 --out runs/s1 \
        --edit-pairs checkpoints/directions/demo-teacher
    # stage 2: reconstruction + adversarial; the discriminator's real set mixes real images and teacher renders
    python -m training.distill --teacher demo-teacher --stage 2 --student runs/s1/student.safetensors \
        --real data/demo128 --real-ratio 0.5 --out runs/s2 --minutes 60
    # the same on 2 processes (CPU: gloo; GPUs: nccl, one process per GPU)
    torchrun --standalone --nproc_per_node 2 -m training.distill --teacher demo-teacher --stage 1 --out runs/s1
    # PC-GAN baseline: the same student architecture, adversarial only, on the real images
    python -m training.distill --teacher demo-teacher --mode pcgan --real data/demo128 --out runs/pcgan

Running a command again with the same --out resumes from the newest readable checkpoint (--steps, --minutes and
the intervals may change). Exit status 2 on a user error.
"""

import argparse
import sys
from pathlib import Path

from editkit.errors import EditkitError, one_line
from editkit.models.student import DEFAULT_WIDTH


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_argument_group("what to train")
    what.add_argument("--teacher", required=True, help="teacher: registry name, .safetensors or official .pkl")
    what.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds checkpoints)")
    what.add_argument("--mode", choices=["distill", "pcgan"], default="distill")
    what.add_argument("--stage", type=int, choices=[1, 2], default=None,
                      help="distill: 1 = reconstruction (when not given), 2 = + adversarial")
    what.add_argument("--student", type=Path, help="start from this exported student (e.g. stage 1's)")
    what.add_argument("--warm-start", type=Path,
                      help="start from a student of an earlier version of this teacher (e.g. before it was "
                           "fitted further): its synthesis weights, this teacher's mapping network")
    what.add_argument("--init", choices=["teacher", "fresh"], default=None,
                      help="weights of a new student and D: copied from the teacher where they fit, or random "
                           "(when not given: teacher for distill, fresh for pcgan)")
    what.add_argument("--width", type=float, default=DEFAULT_WIDTH,
                      help="new student: 32 x width channels at the output resolution")
    what.add_argument("--channel-max", type=int, help="new student: widest layer (default: the teacher's)")
    data = parser.add_argument_group("data")
    data.add_argument("--real", type=Path, help="real images, EG3D dataset folder (stage 2, pcgan)")
    data.add_argument("--real-ratio", type=float, default=0.5,
                      help="stage 2: share of the discriminator's real set drawn from --real (rest: teacher renders)")
    data.add_argument("--yaw-range", type=float, default=45.0, help="teacher cameras: yaw uniform in +-this (deg)")
    data.add_argument("--pitch-range", type=float, default=20.0, help="teacher cameras: pitch uniform in +-this")
    data.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the teacher's w")
    data.add_argument("--edit-pairs", nargs="+", metavar="DIRECTION",
                      help="distill: direction files (.npy) or folders of them; half of each batch repeats the other "
                           "half's cameras with w moved along one of them, and --pair-weight scores the student's "
                           "image change against the teacher's (what editing through the student relies on)")
    data.add_argument("--pair-strength", type=float, default=2.0,
                      help="edit pairs: strengths uniform in +-this (x the direction's own scale)")
    data.add_argument("--pair-balance", action="store_true",
                      help="edit pairs: weigh each direction's pairs by the inverse of its image change through the "
                           "teacher, so directions that move few pixels (brows, eyes) count as much as the others")
    data.add_argument("--pair-mix", action="store_true",
                      help="edit pairs: move each partner along every direction at once, each by its own random "
                           "strength (every pair then teaches every direction, not one in K)")
    data.add_argument("--raw-resolution", type=int,
                      help="size of the discriminator's image_raw copy (default: the teacher's neural rendering)")
    loss = parser.add_argument_group("losses and optimisation")
    loss.add_argument("--batch", type=int, default=4, help="images per process and step")
    loss.add_argument("--lr-g", type=float, default=0.002)
    loss.add_argument("--lr-d", type=float, default=0.002)
    loss.add_argument("--l1-weight", type=float, default=1.0)
    loss.add_argument("--lpips-weight", type=float, default=1.0, help="0 trains without the perceptual loss")
    loss.add_argument("--lpips-net", choices=["vgg", "alex"], default="vgg")
    loss.add_argument("--lpips-resolution", type=int, default=256, help="LPIPS on images resized to at most this")
    loss.add_argument("--pair-weight", type=float, default=4.0,
                      help="with --edit-pairs: weight of the L1 between the student's and the teacher's change")
    loss.add_argument("--adv-weight", type=float, default=0.1, help="stage 2: weight of the generator's GAN loss")
    loss.add_argument("--r1-gamma", type=float, default=1.0, help="R1 weight (0 disables)")
    loss.add_argument("--r1-interval", type=int, default=4, help="R1 every this many steps (lazy regularisation)")
    loss.add_argument("--ema-beta", type=float, default=0.999,
                      help="EMA decay of the exported student per step, reached by a ramp (step+1)/(step+10)")
    run = parser.add_argument_group("run")
    run.add_argument("--steps", type=int, default=20000, help="total steps (all sessions of the run)")
    run.add_argument("--minutes", type=float, help="stop after this much wall time (all sessions of the run)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every this many steps")
    run.add_argument("--sample-every", type=int, default=500,
                     help="sample grid every this many steps and at the end (0: none)")
    run.add_argument("--log-every", type=int, default=10, help="log.jsonl record every this many steps")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from training.distill.loop import train

    try:
        train(args)
    except EditkitError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
