"""Contact sheet of the demo world (docs/demo_world_contact_sheet.png).

    python -m training.synthetic.contact_sheet [--out docs/demo_world_contact_sheet.png] [--size 160]

Rows 1-4: random heads (``sample_params``) at random FFHQ-like poses. Row 5: one (medium-toned) head's expression
units at full weight (neutral, smile, jaw open, blink, brow raise, mouth funnel, frown with lowered brows, squint).
Row 6: the same head from yaw -45 to 45 degrees (the middle two: pitch -15 and +15 degrees, from below and above).
Row 7: the same head under eight lights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from editkit import cameras
from training.synthetic.dataset import sample_poses
from training.synthetic.head_model import HeadParams, sample_params
from training.synthetic.render import HeadRenderer

EXPRESSIONS = ({}, {"smile_l": 1, "smile_r": 1}, {"jaw_open": 0.8}, {"blink_l": 1, "blink_r": 1},
               {"brow_raise": 1}, {"mouth_funnel": 1}, {"frown": 1, "brow_down": 1}, {"eye_squint": 1})
POSES = ((-45, 0), (-30, 0), (-15, 0), (0, -15), (0, 15), (15, 0), (30, 0), (45, 0))
LIGHTS = ((-1.2, 0.3), (-0.6, 0.6), (0.0, 0.2), (0.6, 0.6), (1.2, 0.3), (0.0, 1.2), (0.4, -0.2), (2.4, 0.4))


def contact_sheet(size: int = 160, columns: int = 8, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    renderer = HeadRenderer(size)
    random_params = sample_params(rng, 4 * columns)
    yaw, pitch = sample_poses(rng, 4 * columns)
    shots = list(zip(random_params, cameras.make_label(yaw, pitch).numpy()))
    frontal = cameras.make_label(0, 0)[0].numpy()
    head = sample_params(rng, 1, expression=False)[0]
    head[HeadParams.index("skin_tone")] = 0.3  # a medium tone shows light and shade best
    for expression in EXPRESSIONS[:columns]:
        p = head.copy()
        for name, value in expression.items():
            p[HeadParams.index(name)] = value
        shots.append((p, frontal))
    shots += [(head, cameras.make_label(y, t)[0].numpy()) for y, t in POSES[:columns]]
    for azimuth, elevation in LIGHTS[:columns]:
        p = head.copy()
        p[HeadParams.index("light_azimuth")], p[HeadParams.index("light_elevation")] = azimuth, elevation
        shots.append((p, cameras.make_label(15, 0)[0].numpy()))
    tiles = [renderer.render(p, label)["image"] for p, label in shots]
    renderer.release()
    rows = [np.concatenate(tiles[i:i + columns], 1) for i in range(0, len(tiles), columns)]
    return np.round(np.concatenate(rows, 0) * 255).astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/demo_world_contact_sheet.png"))
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(args.size)).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
