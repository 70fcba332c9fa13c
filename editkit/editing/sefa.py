"""SeFa (Shen & Zhou 2021): unsupervised directions in closed form from the synthesis layers' style affines.

Each synthesis layer turns its w into styles with an affine map `s = A w + b`; directions n that change the styles
most maximise sum ||A_i n||^2 over the chosen layers, i.e. they are the top eigenvectors of sum A_i^T A_i (each
style row of A_i scaled to unit norm first, as in the paper's code, so wide layers do not dominate).

Which w each affine reads is found by running the synthesis network once on distinct per-layer ws, so this works
for any generator built from editkit's StyleGAN2 layers. For EG3D teachers only the tri-plane backbone's affines
are used (the upsampler's read the last w and shape only the 2D refinement).
"""

from __future__ import annotations

import numpy as np
import torch

from editkit.cameras import frontal_label
from editkit.editing.directions import Direction, DirectionError


def _synthesis_root(G):
    """(module, call) whose affines SeFa uses: EG3D's backbone synthesis, else the whole generator's synthesis."""
    backbone = getattr(getattr(G, "backbone", None), "synthesis", None)
    if backbone is not None:
        return backbone, lambda ws: backbone(ws, noise_mode="const")
    return G, lambda ws: G.synthesis(ws, frontal_label())


@torch.no_grad()
def style_affines(G) -> list[tuple[str, int, torch.Tensor]]:
    """[(name, w index, effective affine weight (styles, w_dim))] of every style affine of G's synthesis."""
    root, run = _synthesis_root(G)
    affines = [(name, module) for name, module in root.named_modules() if name.split(".")[-1] == "affine"]
    if not affines:
        raise DirectionError(f"{type(G).__name__} has no style affine layers: SeFa needs a StyleGAN2-style synthesis")
    # distinct, widely spaced rows, so each affine input is nearest to the row it reads even after an offset
    ws = 10 * torch.randn(1, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))
    seen = {}

    def record(name):
        def hook(module, inputs, output):  # returns None, so the output is left alone
            seen.setdefault(name, inputs[0][0])
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in affines]
    try:
        run(ws)
    finally:
        for hook in hooks:
            hook.remove()
    found = []
    for name, module in affines:
        if name not in seen:
            continue
        index = int(torch.cdist(seen[name][None], ws[0]).argmin())
        weight = module.weight * getattr(module, "weight_gain", 1.0)
        found.append((name, index, weight.detach().double()))
    return found


def sefa(G, k: int = 5, layers=None):
    """(directions (k, w_dim) orthonormal rows, their eigenvalues (k,), sum of all eigenvalues) from the affines
    reading `layers` (default all)."""
    affines = style_affines(G)
    chosen = [w for _, index, w in affines if layers is None or index in layers]
    if not chosen:
        raise DirectionError(f"no style affine reads layers {layers}")
    a = torch.cat([w / w.norm(dim=1, keepdim=True).clamp_min(1e-12) for w in chosen]).numpy()
    if not 1 <= k <= a.shape[1]:
        raise DirectionError(f"k must be between 1 and w_dim ({a.shape[1]}), got {k}")
    gram = a.T @ a
    values, vectors = np.linalg.eigh(gram)  # ascending; symmetric, so the eigenvectors are orthonormal
    order = np.argsort(values)[::-1][:k]
    values, vectors = values[order], vectors[:, order]
    residual = np.abs(gram @ vectors - vectors * values).max()
    if residual > 1e-6 * max(1.0, values[0]):
        raise DirectionError(f"eigen-decomposition did not converge (residual {residual:.2e})")
    return vectors.T.astype(np.float32), values, float(np.trace(gram))


def sefa_directions(G, k: int = 5, layers=None, **metadata) -> list[Direction]:
    """The top-k SeFa components as Directions 'sefa_00', 'sefa_01', ... (unit norm, restricted to `layers`)."""
    vectors, values, total = sefa(G, k, layers)
    directions = []
    for i, (vector, value) in enumerate(zip(vectors, values)):
        if layers is None:
            full = vector[None]
        else:
            full = np.zeros((G.num_ws, G.w_dim), np.float32)
            full[layers] = vector
        data = {"component": i, "eigenvalue": float(value), "share_of_variance": float(value / total)}
        directions.append(Direction(full, attribute=f"sefa_{i:02d}", method="sefa", layers=layers, accuracy=None,
                                    data=data, **metadata))
    return directions
