"""What the distillation trainer feeds on: teacher renders of sampled (w, camera) pairs and real images.

Cameras for the teacher come from a pose distribution wider than the data (uniform yaw and pitch), so the
student also learns the views that are rare in real photos. Real images come from a folder in EG3D's dataset
layout: image files plus `dataset.json` = `{"labels": [[filename, [25 floats]], ...]}`, one label for every image
(read with editkit.images.load_image).
"""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from editkit import cameras
from editkit.errors import EditkitError, ImageError
from editkit.images import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DatasetError(EditkitError):
    """A real-image folder is missing, not in EG3D's layout, or holds unreadable images."""


def sample_cameras(n: int, generator: torch.Generator, yaw_range: float, pitch_range: float) -> torch.Tensor:
    """(n, 25) labels with yaw and pitch uniform in [-range, range] degrees (radius, pivot, focal of FFHQ)."""
    yaw = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * yaw_range
    pitch = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * pitch_range
    return cameras.make_label(yaw, pitch)


class TeacherSampler:
    """Latents and renders from the teacher: w from its mapping (conditioned on the frontal camera, as editing and
    inversion use it), images with the backbone's noise held constant so the target of a (w, camera) is fixed."""

    def __init__(self, G, truncation_psi: float = 1.0):
        self.G = G
        self.truncation_psi = truncation_psi
        self.device = G.w_avg.device

    @torch.no_grad()
    def sample_ws(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.G.z_dim, generator=generator).to(self.device)
        cond = cameras.frontal_label().to(self.device).expand(n, -1)
        return self.G.mapping(z, cond, truncation_psi=self.truncation_psi)

    @torch.no_grad()
    def render(self, ws: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The teacher's final image (N, 3, R, R) for ws from cameras c (draws from torch's default generator)."""
        return self.G.synthesis(ws, c.to(self.device), noise_mode="const")["image"]

    @torch.no_grad()
    def render_pairs(self, ws: torch.Tensor, c: torch.Tensor, seed: int) -> torch.Tensor:
        """`render` for a batch of edit pairs (`edit_pairs`): both halves are drawn with the same ray offsets, so
        the volume renderer's sampling noise is not part of a pair's change."""
        half = len(ws) // 2
        images = []
        for part in (slice(0, half), slice(half, 2 * half), slice(2 * half, len(ws))):
            if part.stop > part.start:
                torch.manual_seed(seed)
                images.append(self.render(ws[part], c[part]))
        return torch.cat(images)


def load_pair_directions(paths, num_ws: int, w_dim: int) -> torch.Tensor:
    """(K, num_ws, w_dim) float32: the direction files among `paths` (files or folders of .npy files), each checked
    against the teacher's w shape (editkit.editing.load_direction) and expanded to W+."""
    from editkit.editing.directions import expand, load_direction

    files = []
    for path in map(Path, paths):
        files += sorted(path.glob("*.npy")) if path.is_dir() else [path]
    if not files:
        raise EditkitError(f"--edit-pairs {' '.join(map(str, paths))}: no direction files (.npy) there")
    vectors = [expand(load_direction(f, num_ws, w_dim).vector, num_ws) for f in files]
    return torch.from_numpy(np.stack(vectors))


def edit_pairs(ws: torch.Tensor, c: torch.Tensor, directions: torch.Tensor, strength: float,
               generator: torch.Generator, mix: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The batch as pairs: item i + n/2 is item i (same camera) moved along a random direction by a strength
    uniform in +-`strength`; with `mix`, along every direction at once, each by its own such strength. (An odd last
    item stays as it is.) Returns ws, c and each pair's direction index (None with `mix`)."""
    half = len(ws) // 2
    if mix:
        pick = None
        s = (torch.rand(half, len(directions), generator=generator) * 2 - 1) * strength
        moves = torch.einsum("pk,kld->pld", s.to(ws), directions.to(ws))
    else:
        pick = torch.randint(len(directions), (half,), generator=generator)
        s = (torch.rand(half, generator=generator) * 2 - 1) * strength
        moves = s[:, None, None].to(ws) * directions[pick].to(ws)
    ws, c = ws.clone(), c.clone()
    ws[half:2 * half] = ws[:half] + moves
    c[half:2 * half] = c[:half]
    return ws, c, pick


def balancing_weights(teacher: TeacherSampler, directions: torch.Tensor, samples: int = 8,
                      seed: int = 0) -> torch.Tensor:
    """(K,) weights, mean 1, inversely proportional to each direction's image change through the teacher (mean
    |change| at strength 1, `samples` heads from the front): the pair term then weighs a direction that moves a few
    pixels (a brow raise) as much as one that moves many (a jaw drop)."""
    generator = torch.Generator().manual_seed(seed)
    ws = teacher.sample_ws(samples, generator)
    c = cameras.frontal_label().to(teacher.device).expand(2 * samples, -1)
    change = []
    for direction in directions.to(ws):
        images = teacher.render_pairs(torch.cat([ws, ws + direction]), c, seed)
        change.append((images[:samples] - images[samples:]).abs().mean())
    inverse = 1 / torch.stack(change).clamp_min(1e-8)
    return (inverse / inverse.mean()).cpu()


def real_slots(n: int, ratio: float, paired: bool, generator: torch.Generator) -> torch.Tensor:
    """(n,) bool: the batch items whose camera, and whose place in the discriminator's real set, a real image takes
    (each with probability `ratio`; the others' place goes to their teacher render). With edit pairs only the items
    the discriminator judges (`judged`) can take one: a partner keeps its pair's camera."""
    chance = torch.full((n,), float(ratio))
    if paired:
        chance[n // 2:2 * (n // 2)] = 0
    return torch.rand(n, generator=generator) < chance


def judged(n: int, paired: bool) -> torch.Tensor:
    """Indices of the batch items the discriminator sees. With edit pairs a partner (item i + n/2) is left out: it
    is a near copy of its pair's first member by construction, which the discriminator's minibatch standard
    deviation would tell from the real set, and no generator could change that."""
    index = torch.arange(n)
    return index[(index < n // 2) | (index >= 2 * (n // 2))] if paired else index


def read_labels(folder: Path) -> list:
    """[(filename, label (25,) float32)] from `folder/dataset.json`, checked entry by entry."""
    path = folder / "dataset.json"
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (expected an EG3D dataset folder with dataset.json)")
    if not path.is_file():
        raise DatasetError(f"{folder}: no dataset.json; an EG3D dataset folder holds images and a dataset.json "
                           "with {\"labels\": [[filename, [25 floats]], ...]} (write one with "
                           "`python -m training.synthetic`)")
    try:
        labels = json.loads(path.read_text()).get("labels")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise DatasetError(f"{path}: not a JSON object with \"labels\" ({e})") from None
    if not isinstance(labels, list) or not labels:
        raise DatasetError(f"{path}: \"labels\" must be a non-empty list of [filename, [25 floats]]")
    entries = {}
    for i, entry in enumerate(labels):
        ok = (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
              and isinstance(entry[1], list) and len(entry[1]) == 25
              and all(isinstance(v, (int, float)) for v in entry[1]))
        if not ok:
            raise DatasetError(f"{path}: labels[{i}] is not [filename, [25 numbers]] (got {str(entry)[:80]})")
        label = np.asarray(entry[1], np.float32)
        if not np.isfinite(label).all():
            raise DatasetError(f"{path}: labels[{i}] ({entry[0]}) has non-finite values")
        name = Path(entry[0])
        if name.is_absolute() or ".." in name.parts:
            raise DatasetError(f"{path}: labels[{i}] names {entry[0]}, outside the dataset folder; use paths "
                               "relative to it")
        if name.as_posix() in entries:
            raise DatasetError(f"{path}: labels[{i}] names {entry[0]} a second time; give each image one label")
        if not (folder / name).is_file():
            raise DatasetError(f"{path}: labels[{i}] names {entry[0]}, which is not in {folder}")
        entries[name.as_posix()] = label
    unlabelled = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.relative_to(folder).as_posix() not in entries)
    if unlabelled:
        raise DatasetError(f"{path}: {len(unlabelled)} image(s) in {folder} have no label (first: {unlabelled[0]}); "
                           "add them to dataset.json or move them out of the folder")
    return list(entries.items())


class RealImages:
    """The images and camera labels of an EG3D dataset folder, as tensors in [-1, 1] at `resolution`."""

    def __init__(self, folder, resolution: int):
        self.folder = Path(folder)
        self.resolution = resolution
        self.entries = read_labels(self.folder)
        self.labels = torch.from_numpy(np.stack([label for _, label in self.entries]))
        self.load(0)  # a first image that does not open fails here, not hours into a run

    def __len__(self):
        return len(self.entries)

    def load(self, index: int) -> torch.Tensor:
        """Image `index` as (3, resolution, resolution) float32 in [-1, 1]; square images are resized to fit."""
        path = self.folder / self.entries[index][0]
        try:
            pixels = load_image(path)
        except ImageError as e:
            raise DatasetError(f"cannot read the image: {e}") from None
        height, width = pixels.shape[:2]
        if width != height:
            raise DatasetError(f"{path}: image is {width}x{height}; EG3D datasets hold square crops")
        if width != self.resolution:
            pixels = np.asarray(Image.fromarray(pixels).resize((self.resolution, self.resolution), Image.LANCZOS))
        return torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)

    def batch(self, indices) -> tuple:
        """(images (N, 3, R, R), labels (N, 25)) for dataset indices."""
        indices = [int(i) for i in indices]
        return torch.stack([self.load(i) for i in indices]), self.labels[indices]
