"""Write an evaluation: ``metrics.json`` (every number), ``report.md`` (the seed paper's table, the noise floor,
per-yaw tables), ``plots/*_vs_yaw.png`` and ``samples/*.png`` (rows: latents, columns: yaws)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from editkit.io import atomic_write, output_group, remove_replaced

PLOTS = {  # file stem -> (title, y label, path to the per-view statistics in a model summary, noise-floor path)
    "pose": ("Pose error", "degrees (lower is better)", ("pose_deg", "per_view"),
             ("pose_deg_detected_landmarks", "per_view")),
    "landmarks": ("Landmark consistency, inner 51 points", "reprojection error / inter-ocular (lower is better)",
                  ("landmark_consistency", "per_view_inner51"), None),
    "identity": ("Identity to the reference view", "cosine (higher is better)",
                 ("identity", "per_view_to_reference"), None),
    "agreement_psnr": ("Agreement with the first model, PSNR", "dB (higher is better)",
                       ("agreement_with_first", "psnr", "per_view"), None),
    "agreement_lpips": ("Agreement with the first model, LPIPS", "LPIPS (lower is better)",
                        ("agreement_with_first", "lpips", "per_view"), None),
}
METRICS, REPORT = "metrics.json", "report.md"


def lookup(tree: dict, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def clean(value):
    """JSON-safe copy: numpy -> Python, non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [clean(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


def fmt(s: dict | None, digits: int = 3, spread: bool = True) -> str:
    """'mean ± std' of a statistics dict, 'n/a' without values."""
    if not s or s.get("mean") is None:
        return "n/a"
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if spread and s.get("std") is not None else "")


def yaw_header(yaws) -> str:
    cells = " | ".join(f"{y:+.1f}°" for y in yaws)
    return f"| | {cells} |\n|---|" + "---|" * len(yaws)


def markdown(results: dict, plots: list, grids: dict) -> str:
    cfg, env, nets, models = results["config"], results["environment"], results["networks"], results["models"]
    yaws = cfg["yaws"]
    lines = [f"# Evaluation: {' vs '.join(models)}", "",
             f"{cfg['n']} latents x {cfg['views']} views (yaw {', '.join(f'{y:+.1f}' for y in yaws)} degrees, pitch "
             f"{cfg['pitch']:+.1f}), seed {cfg['seed']}, truncation psi {cfg['truncation_psi']}; {cfg['latents']}. "
             f"Device: {env['device']}, {env['torch_threads']} torch threads, torch {env['torch']}, commit "
             f"{(env['git_commit'] or 'unknown')[:12]}.", ""]
    if cfg.get("command"):
        lines += ["```", cfg["command"], "```", ""]
    lines += ["Networks behind the numbers:", ""] + [f"- {k}: {v}" for k, v in nets.items()] + [""]
    floor = results.get("noise_floor")
    lines += ["## Summary (mean ± std over latents; the seed paper's table)", "",
              "| model | pose error (deg) ↓ | landmark consistency, inner 51 ↓ | all 68 ↓ | ID, pairwise cosine ↑ "
              "| ID, different latents | s/img ↓ | faces found |", "|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        lc = m.get("landmark_consistency", {})
        lines.append(f"| {name} | {fmt(m.get('pose_deg'), 2)} | {fmt(lc.get('inner51'))} | {fmt(lc.get('all68'))} "
                     f"| {fmt(lookup(m, ('identity', 'pairwise')))} | "
                     f"{fmt(lookup(m, ('identity', 'different_latents')))} | "
                     f"{fmt(m['seconds_per_image'], 4, False)} | {m['faces_found']}/{m['images']} |")
    if floor:
        lines.append(f"| *noise floor: demo-world ground truth* | {fmt(floor.get('pose_deg_detected_landmarks'), 2)} "
                     f"| {fmt(floor.get('landmark_consistency_detected_inner51'))} | "
                     f"{fmt(floor.get('landmark_consistency_detected_all68'))} | "
                     f"{fmt(floor.get('identity_same_head_pairwise'))} | "
                     f"{fmt(floor.get('identity_different_heads'))} | | "
                     f"{floor['faces_found']}/{floor['images']} |")
    lines += ["", "Pose error: angle between the estimated and the given camera rotation. Landmark consistency: "
              "landmarks triangulated over the views with the given cameras and reprojected; mean error over the "
              "views divided by the inter-ocular distance (0 = perfectly consistent). Images without a detected face "
              "are left out and counted in the last column; a latent needs faces in two views for consistency. "
              "ID: cosine between the views of one latent, and between the reference views of different latents "
              "(different heads for the noise floor): identity across views means something only where the first "
              "is well above the second. "
              "Speed: synthesis only, a latent's views in one batch (median).", ""]
    if floor:
        lines += noise_floor_section(floor)
    agreement = {n: m["agreement_with_first"] for n, m in models.items() if "agreement_with_first" in m}
    if agreement:
        first = next(iter(models))
        lines += [f"## Agreement with {first} (same latent, same camera)", "",
                  "| model | PSNR dB ↑ | SSIM ↑ | LPIPS ↓ | ID cosine ↑ |", "|---|---|---|---|---|"]
        for name, a in agreement.items():
            lines.append(f"| {name} | {fmt(a.get('psnr'), 2)} | {fmt(a.get('ssim'))} | {fmt(a.get('lpips'))} | "
                         f"{fmt(a.get('identity'))} |")
        lines.append("")
    fids = {n: m["fid"] for n, m in models.items() if "fid" in m}
    if fids:
        lines += [f"## FID / KID against {cfg['fid_real']}", "", "| model | FID ↓ | KID ↓ | images |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {f['fid']:.2f} | {f['kid_mean']:.4f} ± {f['kid_std']:.4f} | {f['n_generated']} vs "
                  f"{f['n_real']} |" for n, f in fids.items()]
        lines.append("")
    lines += by_yaw_section(models, floor, yaws)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    if grids:
        lines += ["## Samples (rows: latents, columns: yaws as above)", ""]
        for name, path in grids.items():
            lines += [f"**{name}**", "", f"![{name}](samples/{path.name})", ""]
    return "\n".join(lines)


def noise_floor_section(floor: dict) -> list:
    lines = ["## Noise floor: the measuring tools on ground truth", "",
             f"{floor['heads']} demo-world heads at the same yaws and {floor['resolution']} px "
             f"({floor['source']}); faces found in {floor['faces_found']}/{floor['images']} renders.", "",
             "| quantity | value |", "|---|---|",
             f"| landmark detector vs true 2D landmarks, NME all 68 | {fmt(floor['detector_nme_all68'])} |",
             f"| landmark detector vs true 2D landmarks, NME inner 51 | {fmt(floor['detector_nme_inner51'])} |"]
    rows = (("pose_deg_detected_landmarks", "pose estimator vs true camera, detected landmarks (deg)", 2),
            ("pose_deg_true_landmarks", "pose estimator vs true camera, true landmarks (deg)", 2),
            ("landmark_consistency_detected_inner51", "landmark consistency of ground truth, detected, inner 51", 3),
            ("landmark_consistency_detected_all68", "landmark consistency of ground truth, detected, all 68", 3),
            ("landmark_consistency_true_inner51", "landmark consistency, true landmarks, inner 51", 3),
            ("landmark_consistency_true_all68", "landmark consistency, true landmarks, all 68 (jaw is a silhouette)",
             3),
            ("identity_same_head_pairwise", "ID cosine, views of one head", 3),
            ("identity_different_heads", "ID cosine, different heads, reference view", 3))
    lines += [f"| {label} | {fmt(floor[key], digits)} |" for key, label, digits in rows if key in floor]
    return lines + ["", "A generator's number is only resolved where it differs from these by more than their spread.",
                    ""]


def by_yaw_section(models: dict, floor: dict | None, yaws) -> list:
    lines = ["## By yaw (mean per view)", "", yaw_header(yaws)]
    for title, _, path, floor_path in PLOTS.values():
        for name, m in models.items():
            views = lookup(m, path)
            if views:
                lines.append(f"| {title}: {name} | " + " | ".join(fmt(v, 3, False) for v in views) + " |")
        if floor and floor_path and lookup(floor, floor_path):
            lines.append(f"| {title}: noise floor | " +
                         " | ".join(fmt(v, 3, False) for v in lookup(floor, floor_path)) + " |")
    for name, m in models.items():
        lines.append(f"| faces found: {name} | " + " | ".join(str(c) for c in m["faces_found_per_view"]) + " |")
    return lines + [""]


def plot(results: dict, folder: Path, force: bool) -> list[Path]:
    """One PNG per metric that has values: the per-view mean against yaw for every model (and the noise floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yaws, written = results["config"]["yaws"], []
    floor = results.get("noise_floor")
    for stem, (title, ylabel, path, floor_path) in PLOTS.items():
        series = {name: lookup(m, path) for name, m in results["models"].items()}
        if floor and floor_path:
            series["noise floor (ground truth)"] = lookup(floor, floor_path)
        series = {k: [np.nan if s["mean"] is None else s["mean"] for s in v] for k, v in series.items() if v}
        if not any(np.isfinite(v).any() for v in series.values()):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
        for name, values in series.items():
            ax.plot(yaws, values, marker="o", linestyle="--" if name.startswith("noise") else "-", label=name)
        ax.set(title=title, xlabel="yaw (degrees)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(atomic_write(folder / f"{stem}_vs_yaw.png", lambda tmp, fig=fig: fig.savefig(tmp, format="png"),
                                    force=force))
        plt.close(fig)
    return written


def grid(views: np.ndarray) -> np.ndarray:
    """(L, V, H, W, 3) uint8 -> one image with L rows and V columns, 2 px white gaps."""
    n, v, h, w, _ = views.shape
    out = np.full((n * (h + 2) - 2, v * (w + 2) - 2, 3), 255, np.uint8)
    for i in range(n):
        for j in range(v):
            out[i * (h + 2):i * (h + 2) + h, j * (w + 2):j * (w + 2) + w] = views[i, j]
    return out


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).stem)


def write(results: dict, samples: dict, out: Path, force: bool = False) -> list[Path]:
    """Write the JSON, plots, sample grids and Markdown report into ``out``; returns the files written."""
    from PIL import Image

    out = Path(out)
    previous = previous_files(out) if force else []
    with output_group():  # all files appear together, or none
        written = plot(results, out / "plots", force)
        grids = {}
        for i, (name, views) in enumerate(samples.items()):
            if len(views):
                path = out / "samples" / f"{i}_{safe_name(name)}.png"
                image = Image.fromarray(grid(views))
                grids[name] = atomic_write(path, lambda tmp, image=image: image.save(tmp, format="png"),
                                           force=force)
        written += list(grids.values())
        files = [p.relative_to(out).as_posix() for p in written] + [METRICS, REPORT]
        text = json.dumps(clean({**results, "files": files}), indent=1, allow_nan=False) + "\n"
        written.append(atomic_write(out / METRICS, lambda tmp: tmp.write_text(text), force=force))
        report = markdown(results, [p for p in written if p.parent.name == "plots"], grids)
        written.append(atomic_write(out / REPORT, lambda tmp: tmp.write_text(report), force=force))
    remove_replaced(out, previous, written)  # plots and samples of an earlier run with other models
    return written


def previous_files(out: Path) -> list[str]:
    """The files an earlier evaluation in `out` wrote (its metrics.json's "files"); [] if there is none."""
    try:
        files = json.loads((out / METRICS).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
