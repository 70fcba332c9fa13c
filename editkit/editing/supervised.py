"""Supervised directions, InterFaceGAN-style: a linear boundary between latents with and without an attribute.

Labels come as arrays, so any source works: landmark scores of rendered samples (`landmark_scores`, any EG3D
model), the demo world's ground truth (`training/make_directions.py`), or a user's own classifier. Continuous
scores are split into the top and bottom `fraction` (thresholds from the training part); binary labels are used as
they are. A held-out part (never seen by the fit) measures the boundary: accuracy on its extremes and the
correlation of the projection on the direction with the raw score.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit
from tqdm import tqdm

from editkit import attributes
from editkit.cameras import frontal_label, make_label
from editkit.editing.directions import Direction, DirectionError
from editkit.editing.render import render_images

METHODS = ("svm", "logistic")


def binarize(scores: np.ndarray, fraction: float, thresholds=None):
    """(labels 0/1 or -1 for 'in between', (low, high) thresholds) for scores; binary scores pass through.

    Continuous scores: class 0 is the bottom `fraction`, class 1 the top `fraction`; when ties make them overlap
    (an attribute that is mostly off), class 1 is every score above the tied value.
    """
    if thresholds is None:
        values = np.unique(scores)
        if len(values) < 2:
            raise DirectionError("all labels are equal: nothing to separate")
        if len(values) == 2:
            thresholds = (values[0], values[1])
        else:
            low, high = np.quantile(scores, fraction), np.quantile(scores, 1 - fraction)
            if high <= low:  # many tied scores (a mostly-off attribute): split just above the tied value
                high = values[values > low][0] if values[-1] > low else low
            if high <= low:
                raise DirectionError(f"scores barely vary (the top {fraction:.0%} are all equal to the bottom); "
                                     "use more samples or another attribute")
            thresholds = (low, high)
    low, high = thresholds
    labels = np.full(len(scores), -1)
    labels[scores <= low] = 0
    labels[scores >= high] = 1
    return labels, thresholds


def fit_boundary(x: np.ndarray, y: np.ndarray, method: str = "svm", l2: float = 1e-3):
    """(normal (D,), bias) of a linear boundary x @ normal + bias > 0 for class 1, classes weighted equally.

    `svm`: linear SVM with the squared hinge loss; `logistic`: logistic regression; both L2-regularised, solved by
    L-BFGS. `x` should be roughly centred and scaled (the caller standardises).
    """
    if method not in METHODS:
        raise DirectionError(f"unknown method '{method}' (choose from: {', '.join(METHODS)})")
    sign = np.where(y == 1, 1.0, -1.0)
    counts = np.array([(y == 0).sum(), (y == 1).sum()])
    if counts.min() == 0:
        raise DirectionError("the labels hold only one class: nothing to separate")
    weight = 0.5 / counts[y.astype(int)]

    def objective(params):
        beta, bias = params[:-1], params[-1]
        margin = sign * (x @ beta + bias)
        if method == "logistic":
            loss = weight @ np.logaddexp(0, -margin)
            dmargin = -weight * expit(-margin)
        else:
            hinge = np.maximum(0, 1 - margin)
            loss = weight @ hinge ** 2
            dmargin = -2 * weight * hinge
        grad = np.append(x.T @ (dmargin * sign) + l2 * beta, dmargin @ sign)
        return loss + 0.5 * l2 * beta @ beta, grad

    result = minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000})
    beta, bias = result.x[:-1], result.x[-1]
    norm = np.linalg.norm(beta)
    if norm == 0:
        raise DirectionError("the fit found no boundary (all weights zero)")
    return beta / norm, bias / norm


def fit_direction(ws, scores, attribute: str, method: str = "svm", space: str = "w", layers=None,
                  fraction: float = 0.25, heldout: float = 0.2, seed: int = 0, l2: float = 1e-3,
                  **metadata) -> Direction:
    """Fit a direction to latents ws (N, num_ws, w_dim) and labels (N,) (NaN: unlabelled, dropped).

    space 'w': one W direction from the mean w of each sample (applied to `layers`, default all);
    space 'w+': one boundary over the concatenated `layers` of W+. The result points towards higher scores and
    has unit norm per edited layer; `metadata` (model, model_sha256, data, ...) goes into the Direction.
    """
    ws, scores = np.asarray(ws, np.float64), np.asarray(scores, np.float64)
    if ws.ndim != 3 or len(ws) != len(scores):
        raise DirectionError(f"need ws (N, num_ws, w_dim) and N scores, got {ws.shape} and {scores.shape}")
    if space not in ("w", "w+"):
        raise DirectionError(f"space must be 'w' or 'w+', got '{space}'")
    keep = np.isfinite(scores)
    ws, scores = ws[keep], scores[keep]
    num_ws, w_dim = ws.shape[1:]
    layers = list(range(num_ws)) if layers is None else list(layers)
    features = ws.mean(1) if space == "w" else ws[:, layers].reshape(len(ws), -1)
    order = np.random.default_rng(seed).permutation(len(ws))
    n_held = int(round(heldout * len(ws)))
    held, train = order[:n_held], order[n_held:]
    if len(train) < 10 or n_held < 2:
        raise DirectionError(f"only {len(ws)} labelled samples: too few to fit and check a direction")
    y, thresholds = binarize(scores[train], fraction)
    fit_rows = train[y >= 0]
    mean, scale = features[fit_rows].mean(0), features[fit_rows].std() + 1e-12
    normal, bias = fit_boundary((features[fit_rows] - mean) / scale, y[y >= 0], method, l2)

    y_held, _ = binarize(scores[held], fraction, thresholds)
    decision = (features[held] - mean) / scale @ normal + bias
    judged = y_held >= 0
    accuracy = float(np.mean((decision[judged] > 0) == (y_held[judged] == 1))) if judged.any() else None
    projection = features @ normal
    correlation = float(np.corrcoef(projection[held], scores[held])[0, 1]) if np.std(scores[held]) > 0 else None

    rows = normal.reshape(-1, w_dim)  # one row (space w) or one per layer (space w+)
    rows = rows / np.sqrt(np.mean(np.sum(rows ** 2, -1)))  # unit norm per edited layer (on average for w+)
    if space == "w" and len(layers) == num_ws:
        vector = rows
    else:
        vector = np.zeros((num_ws, w_dim))
        vector[layers] = rows
    data = {**metadata.pop("data", {}), "samples": int(keep.size), "labelled": int(keep.sum()),
            "fit_samples": int(len(fit_rows)), "heldout_samples": int(n_held),
            "heldout_judged": int(judged.sum()), "heldout_correlation": correlation, "space": space,
            "fraction": fraction, "thresholds": [float(t) for t in thresholds], "l2": l2, "seed": seed,
            "projection_std": float(projection.std())}
    return Direction(vector.astype(np.float32), attribute=attribute, method=f"supervised-{method}",
                     layers=None if len(layers) == num_ws else layers, accuracy=accuracy, data=data, **metadata)


# ------------------------------------------------------------------------------------------- samples and labels


def sample_latents(G, n: int, seed: int = 0, truncation_psi: float = 1.0, batch: int = 64):
    """(z (n, z_dim), ws (n, num_ws, w_dim)) numpy arrays; z ~ N(0, 1) from `seed`, mapped with the frontal camera."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    return z.numpy(), map_latents(G, z, truncation_psi, batch)


@torch.no_grad()
def map_latents(G, z: torch.Tensor, truncation_psi: float = 1.0, batch: int = 64) -> np.ndarray:
    """ws (n, num_ws, w_dim) of latents z (n, z_dim), mapped with the frontal camera."""
    ws = [G.mapping(chunk, frontal_label().expand(len(chunk), -1), truncation_psi=truncation_psi)
          for chunk in z.split(batch)]
    return torch.cat(ws).numpy()


def landmark_scores(G, ws, attribute: str, yaw: float = 0.0, pitch: float = 0.0, batch: int = 8) -> np.ndarray:
    """Landmark score of `attribute` for each latent's render at (yaw, pitch); NaN where dlib finds no face."""
    attributes.check(attribute)  # before the slow part
    ws = torch.as_tensor(np.asarray(ws, np.float32))
    scores = np.full(len(ws), np.nan)
    label = make_label(yaw, pitch)
    with tqdm(total=len(ws), desc=f"rendering and scoring {attribute}", unit="sample") as bar:
        for start in range(0, len(ws), batch):
            chunk = ws[start:start + batch]
            for i, image in enumerate(render_images(G, chunk, label.expand(len(chunk), -1))):
                landmarks = attributes.detect_landmarks(image)
                if landmarks is not None:
                    scores[start + i] = attributes.score(attribute, landmarks)
            bar.update(len(chunk))
    return scores
