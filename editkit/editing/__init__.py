"""Latent editing: directions (supervised, SeFa, imported), conditional and layer-restricted edits, new views.

- `directions`: the Direction record, its .npy + JSON files, validation of published files, layer algebra;
- `supervised`: InterFaceGAN-style linear boundaries fitted to labels of generated samples;
- `sefa`: closed-form unsupervised directions from the style affine weights;
- `registry`: the shipped directions (checkpoints/directions/registry.json);
- `edit`: `editkit edit` (latent in, edited views out); `render`: images, grids, orbit videos;
- `commands`: the command-line front ends.
"""

from editkit.editing.directions import (Direction, DirectionError, apply_edits, load_direction, parse_layers,
                                        project_out, restrict, save_direction)

__all__ = ["Direction", "DirectionError", "apply_edits", "load_direction", "parse_layers", "project_out", "restrict",
           "save_direction"]
