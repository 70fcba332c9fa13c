"""`editkit eval`: the same latents rendered by every model along a yaw sweep, measured side by side.

Latents: ``z ~ N(0, I)`` from a fixed seed, mapped to w by the *first* model's mapping network (conditioned on the
frontal camera, truncation ``psi``); every model renders those same ws (teacher and student share the w space) at
``views`` yaws evenly spaced in [-yaw_range, yaw_range]. Per image: 68 landmarks (``editkit.metrics.faces``), then
pose error, landmark consistency and identity per latent; models after the first are also compared with the first
at each view (PSNR, SSIM, LPIPS and, with --id, identity). Faces the detector misses are counted, never fatal.
The noise floor (``noise_floor``) runs the same detector, pose estimator and embedder on demo-world renders with
exact ground truth. ``editkit.metrics.report`` writes the JSON, Markdown, plots and sample grids.
"""

from __future__ import annotations

import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from editkit import cameras
from editkit.errors import EditkitError
from editkit.io import check_outputs
from editkit.metrics import faces, identity, landmarks, pose

REFERENCE_YAW = 0.0  # identity is measured against the view nearest to this yaw


@dataclass
class EvalConfig:
    """What `editkit eval` measures; the defaults are the seed paper's protocol at 200 latents x 5 views."""

    models: list
    n: int = 200
    views: int = 5
    yaw_range: float = 35.0
    pitch: float = 0.0
    seed: int = 0
    truncation_psi: float = 0.7
    identity: bool = True
    landmarks: bool = True
    pose: bool = True
    id_model: str | None = None
    fid_real: str | None = None
    noise_floor: bool = False
    noise_floor_n: int = 50
    samples: int = 8
    device: str = "cpu"

    def yaws(self) -> np.ndarray:
        return np.linspace(-self.yaw_range, self.yaw_range, self.views) if self.views > 1 else np.zeros(1)

    def command_line(self) -> str:
        """The `editkit eval` command that reproduces this configuration."""
        flags = [("--id", self.identity), ("--landmarks", self.landmarks), ("--pose", self.pose),
                 ("--noise-floor", self.noise_floor)]
        words = ["editkit", "eval", *(flag for flag, on in flags if on), "--models", ",".join(self.models),
                 "--n", self.n, "--views", self.views, "--yaw-range", self.yaw_range, "--pitch", self.pitch,
                 "--seed", self.seed, "--truncation", self.truncation_psi, "--samples", self.samples]
        for flag, value in (("--id-model", self.id_model), ("--fid", self.fid_real),
                            ("--noise-floor-n", self.noise_floor_n if self.noise_floor else None)):
            if value is not None:
                words += [flag, value]
        return shlex.join(str(w) for w in words) + " --out DIR"

    def check(self) -> None:
        if not self.models:
            raise EditkitError("--models: give at least one model (registry name or path), comma-separated")
        from editkit.checkpoints import named_model

        labels = [named_model(spec)[0] for spec in self.models]
        if len(set(labels)) != len(labels):  # also a model listed twice
            raise EditkitError(f"--models: two models have the same label ({', '.join(self.models)}); "
                               "name them with LABEL=PATH")
        if self.n < 1 or self.views < 1 or self.noise_floor_n < 1:
            raise EditkitError("--n, --views and --noise-floor-n must be at least 1")
        if self.landmarks and self.views < 2:
            raise EditkitError("--landmarks needs at least 2 views (--views) to triangulate")


def describe(fn) -> str:
    """A function's dotted name and the first sentence of its module's docstring, for reports."""
    doc = " ".join((sys.modules[fn.__module__].__doc__ or "").split("\n\n")[0].split())
    return f"{fn.__module__}.{fn.__qualname__}" + (f" ({doc.split('. ')[0].rstrip('.')})" if doc else "")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, C-contiguous: dlib misreads strided arrays (a permuted
    view made it find faces in 5% of images instead of 100%)."""
    return np.ascontiguousarray(((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                                .permute(0, 2, 3, 1).cpu().numpy())


def stats(values) -> dict:
    """mean, median, std and count of the non-None values (None statistics when there are none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return {"mean": None, "median": None, "std": None, "count": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()), "count": len(v)}


def per_view(rows: list, views: int) -> list:
    """Statistics per view of per-latent rows (each a list with one value or None per view)."""
    return [stats([row[i] for row in rows]) for i in range(views)]


def view_stats(rows: list, views: int) -> dict:
    """Statistics over all values of per-latent rows, plus ``per_view``."""
    return {**stats([v for row in rows for v in row]), "per_view": per_view(rows, views)}


class Measures:
    """Detector, pose estimator and embedder shared by the models and the noise floor."""

    def __init__(self, config: EvalConfig):
        self.config = config
        self.detector = faces.LandmarkDetector()
        self.estimator = faces.estimate_camera
        self.embedder = identity.load_embedder(config.id_model) if config.identity else None

    def networks(self) -> dict:
        out = {"landmarks": self.detector.name}
        if self.config.pose:
            out["pose"] = describe(self.estimator)
        if self.embedder is not None:
            out["identity"] = f"{self.embedder.name} (raw cosine)"
        return out

    def measure(self, images: np.ndarray, labels: np.ndarray, reference: int) -> dict:
        """Every per-view measure for the views of one latent (or one head): landmarks, pose, consistency, ID."""
        found = [self.detector(image) for image in images]
        size = images.shape[1]
        out = {"face": [lm is not None for lm in found], "landmarks": found}
        if self.config.pose:
            out["pose_deg"] = pose.pose_errors(found, labels, size, self.estimator)
        if self.config.landmarks:
            out["consistency"] = landmarks.consistency(found, labels, size)
        if self.embedder is not None:
            out["embeddings"] = [None if lm is None else self.embedder.embed(image, lm)
                                 for image, lm in zip(images, found)]
            out["identity"] = identity.view_identity(out["embeddings"], reference)
        return out


class ModelRun:
    """One model's renders and per-latent numbers."""

    def __init__(self, name: str, generator, device: str):
        self.name, self.G, self.device = name, generator, device
        self.rows = {key: [] for key in (
            "face", "seconds_per_image", "pose_deg", "consistency_all68", "consistency_inner51",
            "consistency_all68_per_view", "consistency_inner51_per_view", "id_to_reference", "id_pairwise",
            "reference_embedding")}
        self.agreement = {}
        self.samples = []

    def render(self, ws: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
        """Images (V, 3, H, W) of one latent's ws (1, num_ws, w_dim) at cameras (V, 25), and seconds per image."""
        torch.manual_seed(seed)  # the teacher's ray sampling is random: same seed, same render
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            images = self.G.synthesis(ws.expand(len(labels), -1, -1).to(self.device), labels.to(self.device))["image"]
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return images.float().cpu(), (time.perf_counter() - start) / len(labels)

    def add(self, measured: dict, seconds: float, reference: int) -> None:
        rows = self.rows
        rows["face"].append(measured["face"])
        rows["seconds_per_image"].append(seconds)
        if "pose_deg" in measured:
            rows["pose_deg"].append(measured["pose_deg"])
        if "consistency" in measured:
            c = measured["consistency"]
            rows["consistency_all68_per_view"].append(c["per_view_all"])
            rows["consistency_inner51_per_view"].append(c["per_view_inner"])
            rows["consistency_all68"].append(c["all"])
            rows["consistency_inner51"].append(c["inner"])
        if "identity" in measured:
            rows["id_to_reference"].append(measured["identity"]["to_reference"])
            rows["id_pairwise"].append(measured["identity"]["pairwise"])
            rows["reference_embedding"].append(measured["embeddings"][reference])

    def add_agreement(self, name: str, values: list) -> None:
        self.agreement.setdefault(name, []).append(values)

    def summary(self, views: int) -> dict:
        rows = self.rows
        faces_found = np.asarray(rows["face"], bool).reshape(-1, views)
        out = {
            "images": int(faces_found.size),
            "faces_found": int(faces_found.sum()), "no_face": int(faces_found.size - faces_found.sum()),
            "faces_found_per_view": faces_found.sum(0).tolist(),
            "seconds_per_image": stats(rows["seconds_per_image"]),
        }
        if rows["pose_deg"]:
            out["pose_deg"] = view_stats(rows["pose_deg"], views)
        if rows["consistency_all68"]:
            out["landmark_consistency"] = {
                "all68": stats(rows["consistency_all68"]), "inner51": stats(rows["consistency_inner51"]),
                "latents_without_two_faces": sum(v is None for v in rows["consistency_all68"]),
                "per_view_all68": per_view(rows["consistency_all68_per_view"], views),
                "per_view_inner51": per_view(rows["consistency_inner51_per_view"], views)}
        if rows["id_pairwise"]:
            out["identity"] = {"pairwise": stats(rows["id_pairwise"]),
                               "per_view_to_reference": per_view(rows["id_to_reference"], views),
                               "different_latents": stats(identity.between_people(rows["reference_embedding"]))}
        if self.agreement:
            out["agreement_with_first"] = {key: view_stats(rows_, views) for key, rows_ in self.agreement.items()}
        return out


def load_models(config: EvalConfig) -> list[ModelRun]:
    """Every model of the config, checked to share the first one's latent space."""
    from editkit.checkpoints import load_generator, named_model

    named = map(named_model, config.models)  # labels checked unique by config.check
    runs = [ModelRun(label, load_generator(model, device=config.device), config.device) for label, model in named]
    first = runs[0].G
    for run in runs[1:]:
        for attribute in ("z_dim", "w_dim", "num_ws"):
            if getattr(run.G, attribute) != getattr(first, attribute):
                raise EditkitError(f"{run.name} and {runs[0].name} do not share a latent space ({attribute} "
                                   f"{getattr(run.G, attribute)} != {getattr(first, attribute)}); compare a "
                                   "student only with its own teacher")
    return runs


def latents(G, config: EvalConfig) -> torch.Tensor:
    """(n, num_ws, w_dim) ws from the config's seed through G's mapping (frontal conditioning camera)."""
    z = torch.randn(config.n, G.z_dim, generator=torch.Generator().manual_seed(config.seed))
    c = cameras.frontal_label().expand(config.n, -1)
    with torch.no_grad():
        return G.mapping(z.to(config.device), c.to(config.device), truncation_psi=config.truncation_psi).cpu()


def agreement(image_metrics, images: torch.Tensor, first: torch.Tensor) -> dict:
    """Per-view image metrics of `images` against the first model's (resized to its resolution if need be)."""
    if images.shape[-1] != first.shape[-1]:
        images = F.interpolate(images, size=first.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    return {key: [float(v) if np.isfinite(float(v)) else None for v in value]
            for key, value in image_metrics(images, first).items()}


def run(config: EvalConfig, out: Path, force: bool = False) -> list[Path]:
    """Evaluate and write the report into ``out`` (``editkit.metrics.report``); returns the files written."""
    from editkit.metrics import report

    out = Path(out)
    check_outputs([out / report.METRICS, out / report.REPORT], force)  # before the slow part
    with tempfile.TemporaryDirectory(prefix="editkit-eval-") as tmp:
        results, samples = evaluate(config, Path(tmp))
    return report.write(results, samples, out, force)


def evaluate(config: EvalConfig, scratch: Path) -> tuple[dict, dict]:
    """Run the evaluation: (results, samples). ``results`` is JSON-ready (see ``editkit.metrics.report``);
    ``samples`` maps each model to the uint8 views (L, V, H, W, 3) of its first ``config.samples`` latents. With
    ``config.fid_real``, every render is also saved under ``scratch`` for FID/KID."""
    config.check()
    if config.fid_real:
        from editkit.metrics import fid

        fid.check_ready(config.fid_real)  # fail before the slow part
    measures = Measures(config)
    runs = load_models(config)
    ws = latents(runs[0].G, config)
    yaws = config.yaws()
    labels = cameras.make_label(yaws, config.pitch)
    reference = int(np.argmin(np.abs(yaws - REFERENCE_YAW)))
    image_metrics = None
    if len(runs) > 1:
        from editkit.metrics.image import ImageMetrics

        image_metrics = ImageMetrics()
    for i in tqdm(range(config.n), desc="eval", unit="latent"):
        first_images, first_embeddings = None, None
        for m, model in enumerate(runs):
            images, seconds = model.render(ws[i:i + 1], labels, seed=config.seed * 100003 + i)
            pixels = to_uint8(images)
            measured = measures.measure(pixels, labels.numpy(), reference)
            model.add(measured, seconds, reference)
            if i < config.samples:
                model.samples.append(pixels)
            if config.fid_real:
                save_images(scratch / f"model{m}", pixels, i)
            if m == 0:
                first_images, first_embeddings = images, measured.get("embeddings")
                continue
            for key, values in agreement(image_metrics, images, first_images).items():
                model.add_agreement(key, values)
            if first_embeddings is not None:
                model.add_agreement("identity", [None if a is None or b is None else identity.cosine(a, b)
                                               for a, b in zip(measured["embeddings"], first_embeddings)])
    models = {model.name: model_info(model) | model.summary(config.views) for model in runs}
    if config.fid_real:
        for m, model in enumerate(runs):
            models[model.name]["fid"] = fid.fid_kid(scratch / f"model{m}", config.fid_real)
    results = {
        "config": {**asdict(config), "command": config.command_line(), "yaws": yaws.tolist(),
                   "reference_view": reference,
                   "latents": "z ~ N(0, I) from the seed, w by the first model's mapping (frontal camera)"},
        "environment": environment(config.device),
        "networks": measures.networks(),
        "models": models,
        "per_latent": {model.name: model.rows | {"agreement_with_first": model.agreement} for model in runs},
    }
    if image_metrics is not None:
        results["networks"]["agreement"] = f"PSNR/SSIM on [0, 1], {image_metrics.name}"
    if config.fid_real:
        results["networks"]["fid"] = models[runs[0].name]["fid"]["network"]
    if config.noise_floor:
        results["noise_floor"] = noise_floor(measures, int(runs[0].G.img_resolution), yaws, config)
    return results, {model.name: np.stack(model.samples) for model in runs if model.samples}


def save_images(folder: Path, pixels: np.ndarray, index: int) -> None:
    """Write one latent's views as PNGs (``<latent>_<view>.png``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for v, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{index:05d}_{v}.png")


def model_info(model: ModelRun) -> dict:
    G = model.G
    return {"class": type(G).__name__, "img_resolution": int(G.img_resolution),
            "parameters": int(sum(p.numel() for p in G.parameters()))}


def environment(device: str) -> dict:
    from editkit.checkpoints import git_commit

    return {"device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "git_commit": git_commit(),
            "timing": "synthesis only, all views of a latent in one batch, seconds per image"}


def noise_floor(measures: Measures, resolution: int, yaws: np.ndarray, config: EvalConfig) -> dict:
    """The same measures on demo-world renders with exact ground truth, at the same yaws and resolution.

    Reports the detector's error against the true 2D landmarks (NME, outer-eye-corner normalised), the pose
    estimator's error against the true cameras (from detected and from true landmarks), landmark consistency of
    detected and of true landmarks (what a perfectly 3D-consistent generator would score), and identity between
    views of one head and between different heads (the embedder's range on this world)."""
    from training.synthetic.head_model import sample_params
    from training.synthetic.render import HeadRenderer

    views = len(yaws)
    labels = cameras.make_label(yaws, config.pitch).numpy()
    reference = int(np.argmin(np.abs(yaws - REFERENCE_YAW)))
    params = sample_params(np.random.default_rng(config.seed), config.noise_floor_n)
    rows = {key: [] for key in (
        "face", "detector_all", "detector_inner", "pose_detected", "pose_true", "consistency_detected_all",
        "consistency_detected_inner", "consistency_true_all", "consistency_true_inner", "id_same_head",
        "reference_embeddings")}
    renderer = HeadRenderer(resolution)
    try:
        for p in tqdm(params, desc="noise floor", unit="head"):
            renders = [renderer.render(p, label) for label in labels]
            images = np.stack([np.round(r["image"] * 255).astype(np.uint8) for r in renders])
            truth = np.stack([r["landmarks2d"] for r in renders])
            measured = measures.measure(images, labels, reference)
            rows["face"].append(measured["face"])
            errors = [None if lm is None else landmarks.normalised_errors(lm[None], t[None])[0]
                      for lm, t in zip(measured["landmarks"], truth)]
            rows["detector_all"].append([None if e is None else float(e.mean()) for e in errors])
            rows["detector_inner"].append([None if e is None else float(e[landmarks.INNER].mean()) for e in errors])
            if config.pose:
                rows["pose_true"].append(pose.pose_errors(list(truth), labels, resolution, measures.estimator))
                rows["pose_detected"].append(measured["pose_deg"])
            if config.landmarks:
                exact = landmarks.consistency(list(truth), labels, resolution)
                rows["consistency_detected_all"].append(measured["consistency"]["all"])
                rows["consistency_detected_inner"].append(measured["consistency"]["inner"])
                rows["consistency_true_all"].append(exact["all"])
                rows["consistency_true_inner"].append(exact["inner"])
            if config.identity:
                rows["id_same_head"].append(measured["identity"]["pairwise"])
                rows["reference_embeddings"].append(measured["embeddings"][reference])
    finally:
        renderer.release()
    found = np.asarray(rows["face"], bool)
    out = {"heads": int(config.noise_floor_n), "resolution": resolution,
           "source": "training.synthetic.HeadRenderer renders of sample_params heads (seed = --seed)",
           "images": int(found.size), "faces_found": int(found.sum()), "faces_found_per_view": found.sum(0).tolist(),
           "detector_nme_all68": view_stats(rows["detector_all"], views),
           "detector_nme_inner51": view_stats(rows["detector_inner"], views)}
    if config.pose:
        out["pose_deg_detected_landmarks"] = view_stats(rows["pose_detected"], views)
        out["pose_deg_true_landmarks"] = view_stats(rows["pose_true"], views)
    if config.landmarks:
        out["landmark_consistency_detected_all68"] = stats(rows["consistency_detected_all"])
        out["landmark_consistency_detected_inner51"] = stats(rows["consistency_detected_inner"])
        out["landmark_consistency_true_all68"] = stats(rows["consistency_true_all"])
        out["landmark_consistency_true_inner51"] = stats(rows["consistency_true_inner"])
    if config.identity:
        out["identity_same_head_pairwise"] = stats(rows["id_same_head"])
        out["identity_different_heads"] = stats(identity.between_people(rows["reference_embeddings"]))
    return out
