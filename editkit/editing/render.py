"""Render latents from cameras and write the results: PNG, strength x yaw grid, MP4 + GIF orbit (all atomic)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from editkit.io import atomic_write


def _takes_noise_mode(G) -> bool:
    parameters = inspect.signature(G.synthesis).parameters.values()
    return any(p.name == "noise_mode" or p.kind == p.VAR_KEYWORD for p in parameters)


@torch.no_grad()
def render_images(G, ws, labels, batch: int = 8, desc: str | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 images of ws (N, num_ws, w_dim) seen from camera labels (N, 25).

    Synthesis noise is held constant where the generator has any, so views and frames of one latent agree.
    With `desc`, a progress bar counts the batches.
    """
    kwargs = {"noise_mode": "const"} if _takes_noise_mode(G) else {}
    images = []
    for start in tqdm(range(0, len(ws), batch), desc=desc, unit="batch", disable=desc is None):
        out = G.synthesis(ws[start:start + batch], labels[start:start + batch], **kwargs)["image"]
        images.append(to_uint8(out))
    return np.concatenate(images)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) images in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tile (rows * cols, H, W, 3) images row by row into one image."""
    n, h, w, c = images.shape
    return images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def save_png(path, image: np.ndarray, force: bool = False) -> Path:
    """Write an (H, W, 3) uint8 image as PNG."""
    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"), force=force)


def save_gif(path, frames: np.ndarray, fps: int, force: bool = False) -> Path:
    """Write (N, H, W, 3) uint8 frames as a looping GIF."""
    pictures = [Image.fromarray(f) for f in frames]
    return atomic_write(path, lambda tmp: pictures[0].save(tmp, format="GIF", save_all=True,
                                                           append_images=pictures[1:], duration=round(1000 / fps),
                                                           loop=0), force=force)


def save_mp4(path, frames: np.ndarray, fps: int, force: bool = False) -> Path:
    """Write (N, H, W, 3) uint8 frames as an H.264 MP4 (the ffmpeg binary of imageio-ffmpeg)."""
    import imageio_ffmpeg

    def write(tmp):
        height, width = frames.shape[1:3]
        writer = imageio_ffmpeg.write_frames(str(tmp), (width, height), fps=fps, codec="libx264", quality=8,
                                             pix_fmt_out="yuv420p", macro_block_size=16,
                                             output_params=["-f", "mp4"], ffmpeg_log_level="error")
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    return atomic_write(path, write, force=force)
