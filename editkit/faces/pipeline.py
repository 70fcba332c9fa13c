"""Photo in, aligned face out: detect, 68 landmarks, EG3D-framed crop and camera (photos are read with
`editkit.images.load_image`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from editkit.errors import EditkitError, FaceError, FaceTooSmallError, NoFaceError
from editkit.faces.align import Alignment, align_face, scale_of
from editkit.faces.detect import detect_faces
from editkit.faces.landmarks import landmarks68

MIN_FACE_PX = 64  # the crop square must span at least this many photo pixels (about 16 px between the eyes)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def prepare_face(image: np.ndarray, resolution: int, face_index: int = 0, detector: str = "auto",
                 source: str = "photo") -> Alignment:
    """The aligned crop, landmarks and camera of face number `face_index` (0 = largest) of an RGB uint8 photo.

    The returned Alignment also holds the detection (`face`) and the landmarks in photo pixels. `source` names the
    photo in error messages.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EditkitError(f"{source}: expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    faces = detect_faces(image, detector)
    if not faces:
        raise NoFaceError(f"{source}: no face found (MTCNN, then dlib's HOG detector); use a photo with one "
                          "clearly visible, roughly frontal face")
    if not 0 <= face_index < len(faces):
        raise FaceError(f"{source}: face index {face_index} asked for, but {len(faces)} face(s) found "
                        f"(valid: 0..{len(faces) - 1}, largest first)")
    face = faces[face_index]
    points = landmarks68(image, face.landmark_box())
    alignment = align_face(image, points, resolution)
    side = resolution / scale_of(alignment.matrix)
    if side < MIN_FACE_PX:
        raise FaceTooSmallError(f"{source}: the face is too small ({side:.0f} px crop, at least {MIN_FACE_PX} px "
                                "needed); use a larger or closer photo")
    alignment.face, alignment.photo_landmarks = face, points
    return alignment


def photo_files(paths) -> list[Path]:
    """The image files named in `paths`, folders expanded to their images (sorted); a clear error for anything else."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
            if not found:
                raise EditkitError(f"{path}: folder holds no images ({', '.join(PHOTO_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise EditkitError(f"{path}: no such file or folder")
    return files
