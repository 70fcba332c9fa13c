"""Write the synthetic example photos in examples/ (512 px renders with ground-truth JSON beside each).

    python -m training.synthetic.examples [--out examples]

Each ``synthetic_NN.png`` has a ``synthetic_NN.json``: the parameter vector by name, the EG3D camera label, yaw and
pitch in degrees, and the 68 dlib-ordered landmarks in pixels (x right, y down) and in world coordinates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from editkit import cameras
from training.synthetic.head_model import PARAM_NAMES, HeadParams, sample_params
from training.synthetic.render import HeadRenderer

# (yaw, pitch, expression overrides) per example: neutral, smiles, open mouth, raised brows, closed eyes, a turn
SHOTS = (
    (0.0, 0.0, {}),
    (18.0, 4.0, {"smile_l": 0.8, "smile_r": 0.75}),
    (-15.0, -3.0, {"jaw_open": 0.45, "brow_raise": 0.6}),
    (8.0, 10.0, {"smile_l": 1.0, "smile_r": 1.0, "jaw_open": 0.25}),
    (-6.0, -6.0, {"blink_l": 1.0, "blink_r": 1.0}),
    (-32.0, 2.0, {"frown": 0.5, "brow_down": 0.5}),
)


def write_examples(out: Path, resolution: int = 512, seed: int = 2024) -> list[Path]:
    params = sample_params(np.random.default_rng(seed), len(SHOTS), expression=False)
    renderer = HeadRenderer(resolution)
    written = []
    for i, (p, (yaw, pitch, expression)) in enumerate(zip(params, SHOTS)):
        for name, value in expression.items():
            p[HeadParams.index(name)] = value
        label = cameras.make_label(yaw, pitch)[0].numpy()
        o = renderer.render(p, label)
        image = out / f"synthetic_{i:02d}.png"
        Image.fromarray(np.round(o["image"] * 255).astype(np.uint8)).save(image)
        truth = {
            "source": "editkit demo world (training/synthetic), CC0; python -m training.synthetic.examples",
            "resolution": resolution, "yaw": yaw, "pitch": pitch, "label": cameras.to_json(label),
            "params": {name: round(float(v), 6) for name, v in zip(PARAM_NAMES, p)},
            "landmarks2d": np.round(o["landmarks2d"], 3).tolist(),
            "landmarks3d": np.round(o["landmarks3d"], 5).tolist(),
        }
        image.with_suffix(".json").write_text(json.dumps(truth, indent=1) + "\n")
        written.append(image)
    renderer.release()
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("examples"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write_examples(args.out):
        print(path)


if __name__ == "__main__":
    main()
