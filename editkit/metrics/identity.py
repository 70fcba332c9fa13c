"""Identity: cosine similarity of face-recognition embeddings (views of one latent; a photo and its inversion).

A number is only meaningful with the network that produced it, so every result names its embedder. The network is
chosen by ``--id-model SPEC`` or the environment variable ``EDITKIT_ID_MODEL``; SPEC is a path, optionally prefixed
with its kind (``arcface:``, ``sface:``, ``iresnet:``, ``facenet:``, ``dlib:``):

* ``dlib`` (the default, ships offline): dlib's ResNet 128-d descriptor, ``dlib_face_recognition_resnet_model_v1.dat``
  from face-recognition-models. Not ArcFace: its cosines sit high (~0.8 even for different people; its own scale is
  the L2 distance, same person < 0.6), so compare its numbers only with each other;
* ``*.onnx``: an insightface ArcFace model (e.g. ``w600k_r50.onnx``) run by onnxruntime; a file whose name holds
  ``sface`` is OpenCV Zoo's SFace, run by ``cv2.FaceRecognizerSF``;
* ``*.pth`` / ``*.pt``: a state dict (read with ``weights_only=True``): an arcface_torch iresnet (r18..r200, depth
  read from the keys) or facenet-pytorch's InceptionResnetV1 (e.g. ``20180402-114759-vggface2.pt``).

Faces are aligned from their 68 landmarks: a least-squares similarity transform of five points (eye centres, nose
tip, mouth corners) onto ArcFace's 112x112 template (scaled to 160 px for FaceNet); dlib aligns with its own chip
extractor. Similarities are raw cosines in [-1, 1] (not ``0.5 * cos + 0.5``).
"""

from __future__ import annotations

import os
import pickle
from itertools import combinations
from pathlib import Path

import numpy as np

from editkit.errors import CheckpointError, EditkitError, one_line
from editkit.weights import dlib_model_path

ENV = "EDITKIT_ID_MODEL"
# insightface's five-point template for 112x112 crops (eye centres, nose tip, mouth corners; image left first)
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]])
WHERE = {
    "arcface": "an insightface ArcFace .onnx, e.g. w600k_r50.onnx from the buffalo_l pack "
               "(https://github.com/deepinsight/insightface/tree/master/model_zoo)",
    "sface": "face_recognition_sface_2021dec.onnx from https://github.com/opencv/opencv_zoo/tree/main/models/"
             "face_recognition_sface",
    "iresnet": "an arcface_torch backbone.pth, e.g. ms1mv3_arcface_r50_fp16 "
               "(https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch)",
    "facenet": "20180402-114759-vggface2.pt from https://github.com/timesler/facenet-pytorch/releases",
    "dlib": "dlib_face_recognition_resnet_model_v1.dat (pip install face-recognition-models==0.3.0)",
}


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(5, 2): the eye centres, nose tip and mouth corners of 68 dlib-ordered landmarks, image left first."""
    lm = np.asarray(landmarks68, np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def alignment_matrix(landmarks68: np.ndarray, size: int = 112) -> np.ndarray:
    """(2, 3) similarity transform (OpenCV pixel coordinates) taking the five points of ``landmarks68`` onto
    ArcFace's template scaled to ``size``, least squares."""
    src = five_points(landmarks68) - 0.5  # to OpenCV's pixel coordinates (centres at integers)
    dst = TEMPLATE_112 * (size / 112)
    # x' = a x - b y + tx, y' = b x + a y + ty
    rows = np.concatenate([np.stack([src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)], 1),
                           np.stack([src[:, 1], src[:, 0], np.zeros(5), np.ones(5)], 1)])
    a, b, tx, ty = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def align(image: np.ndarray, landmarks68: np.ndarray, size: int = 112) -> np.ndarray:
    """(size, size, 3) uint8 crop of the face warped by ``alignment_matrix``."""
    import cv2

    return cv2.warpAffine(np.ascontiguousarray(image, np.uint8), alignment_matrix(landmarks68, size), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


class Embedder:
    """A face-recognition network: ``embed(image, landmarks68)`` -> (D,) float64 embedding."""

    kind = ""
    label = ""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        """What produced the numbers, for reports: kind, network and file."""
        return f"{self.label}: {self.path.name}"

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DlibResNet(Embedder):
    kind, label = "dlib", "dlib-resnet (not ArcFace), 128-d"

    def __init__(self, path: Path):
        import dlib

        super().__init__(path)
        self._dlib = dlib
        self.model = dlib.face_recognition_model_v1(str(path))

    def embed(self, image, landmarks68):
        dlib = self._dlib
        points = np.rint(np.asarray(landmarks68) - 0.5).astype(int)  # dlib counts pixel centres from 0
        box = dlib.rectangle(*(int(v) for v in (*points.min(0), *points.max(0))))
        shape = dlib.full_object_detection(box, [dlib.point(int(x), int(y)) for x, y in points])
        return np.asarray(self.model.compute_face_descriptor(np.ascontiguousarray(image, np.uint8), shape),
                          np.float64)


class ArcFaceOnnx(Embedder):
    kind, label = "arcface", "arcface-onnx (insightface, onnxruntime)"

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise EditkitError("ArcFace .onnx models need onnxruntime: pip install onnxruntime") from None
        super().__init__(path)
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def embed(self, image, landmarks68):
        x = (align(image, landmarks68).astype(np.float32) - 127.5) / 127.5
        return self.session.run(None, {self.input: x.transpose(2, 0, 1)[None]})[0].reshape(-1).astype(np.float64)


class SFace(Embedder):
    kind, label = "sface", "sface (OpenCV Zoo, cv2.FaceRecognizerSF)"

    def __init__(self, path: Path):
        import cv2

        super().__init__(path)
        self.model = cv2.FaceRecognizerSF.create(str(path), "")

    def embed(self, image, landmarks68):
        bgr = np.ascontiguousarray(align(image, landmarks68)[:, :, ::-1])
        return self.model.feature(bgr).reshape(-1).astype(np.float64)


class TorchEmbedder(Embedder):
    """A torch network on aligned crops of ``size`` px, RGB scaled as ``(x - 127.5) / scale``."""

    size, scale = 112, 127.5

    def __init__(self, path: Path, network):
        super().__init__(path)
        self.network = network.eval()

    def embed(self, image, landmarks68):
        import torch

        x = (align(image, landmarks68, self.size).astype(np.float32) - 127.5) / self.scale
        with torch.no_grad():
            return self.network(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])[0].double().numpy()


class IResNetEmbedder(TorchEmbedder):
    kind, label = "iresnet", "arcface iresnet (arcface_torch state dict)"


class FaceNet(TorchEmbedder):
    kind, label = "facenet", "facenet InceptionResnetV1 (facenet-pytorch)"
    size, scale = 160, 128.0


def read_state_dict(path: Path) -> dict:
    """A state dict of tensors from ``path``, refusing anything else (``torch.load(weights_only=True)``)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable state dict ({one_line(e)[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (iresnet or facenet-pytorch weights)")
    return state


def torch_embedder(path: Path, kind: str | None) -> Embedder:
    """An iresnet or FaceNet embedder from a state dict; the kind is read from the keys unless given."""
    state = read_state_dict(path)
    kind = kind or ("facenet" if "conv2d_1a.conv.weight" in state else
                    "iresnet" if "layer1.0.conv1.weight" in state and "fc.weight" in state else None)
    try:
        if kind == "iresnet":
            from editkit.metrics.iresnet import from_state_dict

            return IResNetEmbedder(path, from_state_dict(state))
        if kind == "facenet":
            from facenet_pytorch import InceptionResnetV1

            network = InceptionResnetV1()  # the embedding network; a classifier head ('logits.*') is dropped
            network.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")}, strict=True)
            return FaceNet(path, network)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: weights do not fit the {kind} network ({str(e).splitlines()[0]})") from None
    raise CheckpointError(f"{path}: neither an iresnet nor a facenet-pytorch state dict (first keys: "
                          f"{', '.join(list(state)[:3])}); prefix the path with iresnet: or facenet:")


EMBEDDERS = {"dlib": DlibResNet, "arcface": ArcFaceOnnx, "sface": SFace}
KINDS = ("dlib", "arcface", "sface", "iresnet", "facenet")


def guess_kind(path: Path) -> str | None:
    """The kind a file name implies (None: a .pth/.pt whose keys decide)."""
    suffix = path.suffix.lower()
    if suffix == ".dat":
        return "dlib"
    if suffix == ".onnx":
        return "sface" if "sface" in path.name.lower() else "arcface"
    if suffix in (".pth", ".pt"):
        return None
    raise EditkitError(f"{path}: unknown face-recognition model type (expected .onnx, .pth/.pt or .dat; "
                       f"or prefix the path with one of {', '.join(k + ':' for k in KINDS)})")


def load_embedder(spec: str | None = None) -> Embedder:
    """The embedder named by ``spec``, else by ``$EDITKIT_ID_MODEL``, else dlib's ResNet (see the module docstring)."""
    spec = spec or os.environ.get(ENV) or "dlib"
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        kind, rest = (spec, "") if spec in KINDS else (None, spec)
    if kind == "dlib" and not rest:
        return DlibResNet(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat"))
    if not rest:
        raise EditkitError(f"--id-model {spec}: give the path of the {kind} weights ({WHERE[kind]})")
    path = Path(rest).expanduser()
    kind = kind or guess_kind(path)
    if not path.is_file():
        wanted = WHERE[kind] if kind else f"{WHERE['iresnet']}; or {WHERE['facenet']}"
        raise CheckpointError(f"face-recognition weights not found at {path}; download {wanted} "
                              f"and pass it with --id-model or {ENV}")
    if kind not in EMBEDDERS:
        return torch_embedder(path, kind)
    try:
        return EMBEDDERS[kind](path)
    except EditkitError:
        raise
    except Exception as e:  # onnxruntime, cv2 and dlib each raise their own types for a bad file
        raise CheckpointError(f"{path}: cannot load it as {kind} weights ({one_line(e)[:200]})") \
            from None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def view_identity(embeddings: list, reference: int) -> dict:
    """Identity across the views of one latent. ``embeddings``: one embedding or None (no face) per view.

    Returns ``to_reference`` (cosine of each view to view ``reference``, None where either has no face) and
    ``pairwise`` (mean cosine over all pairs of views with faces; None with fewer than two)."""
    ref = embeddings[reference]
    to_reference = [None if e is None or ref is None else cosine(e, ref) for e in embeddings]
    pairs = [cosine(a, b) for a, b in combinations([e for e in embeddings if e is not None], 2)]
    return {"to_reference": to_reference, "pairwise": float(np.mean(pairs)) if pairs else None}


def between_people(embeddings: list, measure=cosine) -> list:
    """`measure` (default cosine) of every pair of different people's embeddings (None entries, no face, are
    skipped): the embedder's range between people, against which identity across views is read."""
    return [measure(a, b) for a, b in combinations([e for e in embeddings if e is not None], 2)]


def photo_identity(embedder: Embedder, detector, photo: np.ndarray, inversion: np.ndarray) -> dict:
    """Cosine between a photo and its inversion (uint8 RGB images); ``cosine`` is None when a face is missing."""
    found = [detector(image) for image in (photo, inversion)]
    embeddings = [None if lm is None else embedder.embed(image, lm) for image, lm in zip((photo, inversion), found)]
    missing = [name for name, e in zip(("photo", "inversion"), embeddings) if e is None]
    return {"cosine": None if missing else cosine(*embeddings), "no_face": missing, "network": embedder.name}
