"""The demo world's head model: a compact CC0 head (MakeHuman/MPFB2 assets) driven by one float32 vector.

Parameter vector (``HeadParams``; ``PARAM_NAMES`` names every entry):

* ``identity`` (40): principal-component coefficients of head shape, ~ standard normal.
* ``expression`` (17): Face Units weights in [0, 1] (``EXPRESSION_UNITS``; ``_l``/``_r`` are the subject's left/right).
* ``appearance`` (7): skin tone and redness, lip tint, brow density, hair colour and length, iris colour, in [0, 1].
* ``lighting`` (5): key light azimuth and elevation (radians, world frame: azimuth 0 is in front of the face,
  positive towards +x), intensity, ambient, warmth (0 neutral white, 1 warm tungsten).

World frame (EG3D's): y up, the face looks towards +z, the mean head's FFHQ-style crop fills the frontal camera's
frame; heads from ``sample_params`` stay inside |x|, |y|, |z| < 0.45. ``HeadModel.vertices`` and ``landmarks3d``
return world coordinates.
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from editkit.errors import EditkitError

DEFAULT_MODEL_PATH = Path(__file__).parent / "data" / "head_model.npz"
# cam2world of EG3D's frontal camera (radius 2.7, looking at (0, 0, 0.2), OpenCV axes): editkit.cameras.frontal_label
FRONTAL_CAM2WORLD = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]], np.float64).reshape(16)

# Expression unit -> the Face Units (ARKit-named) targets it sums. Left/Right are the subject's sides (+x is left).
EXPRESSION_UNITS = {
    "smile_l": ("mouthSmileLeft",),
    "smile_r": ("mouthSmileRight",),
    "jaw_open": ("jawOpen",),
    "blink_l": ("eyeBlinkLeft",),
    "blink_r": ("eyeBlinkRight",),
    "brow_raise": ("browInnerUp", "browOuterUpLeft", "browOuterUpRight"),
    "brow_down": ("browDownLeft", "browDownRight"),
    "mouth_funnel": ("mouthFunnel",),
    "mouth_pucker": ("mouthPucker",),
    "frown": ("mouthFrownLeft", "mouthFrownRight"),
    "eye_wide": ("eyeWideLeft", "eyeWideRight"),
    "eye_squint": ("eyeSquintLeft", "eyeSquintRight", "cheekSquintLeft", "cheekSquintRight"),
    "cheek_puff": ("cheekPuff",),
    "gaze_left": ("eyeLookOutLeft", "eyeLookInRight"),
    "gaze_right": ("eyeLookInLeft", "eyeLookOutRight"),
    "gaze_up": ("eyeLookUpLeft", "eyeLookUpRight"),
    "gaze_down": ("eyeLookDownLeft", "eyeLookDownRight"),
}
MATERIALS = ("skin", "eye", "teeth", "tongue", "lashes", "mouth", "cap")


class HeadModelError(EditkitError):
    """The head model file is missing or malformed, a parameter vector has the wrong shape, or a name is unknown."""


def ffhq_crop(landmarks2d: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (2,) and side length of FFHQ's alignment square for 68 dlib-ordered 2D landmarks (x right, y down).

    Same rule as the FFHQ dataset script: the square is centred just below the eyes, oriented by eyes and mouth,
    sized by max(2 x eye-to-eye, 1.8 x eye-to-mouth) times two. The orientation is ignored here.
    """
    lm = np.asarray(landmarks2d, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) / 2 - eye_avg
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    return eye_avg + eye_to_mouth * 0.1, 2 * half


class HeadParams:
    """Layout of the parameter vector: named slices of a float32 vector of length ``HeadParams.SIZE``."""

    identity = slice(0, 40)
    expression = slice(40, 40 + len(EXPRESSION_UNITS))
    appearance = slice(expression.stop, expression.stop + 7)
    lighting = slice(appearance.stop, appearance.stop + 5)
    SIZE = lighting.stop
    APPEARANCE = ("skin_tone", "skin_red", "lip_tint", "brow_density", "hair_color", "hair_length", "iris_color")
    LIGHTING = ("light_azimuth", "light_elevation", "light_intensity", "ambient", "light_warmth")

    @staticmethod
    def index(name: str) -> int:
        """Position of a named entry, e.g. ``HeadParams.index("smile_l")``."""
        if name not in PARAM_NAMES:
            raise HeadModelError(f"unknown head parameter {name!r}; known: identity id00..id39, "
                                 f"{', '.join(PARAM_NAMES[HeadParams.expression.start:])}")
        return PARAM_NAMES.index(name)

    @staticmethod
    def neutral(n: int | None = None) -> np.ndarray:
        """Mean identity, no expression, mid appearance, frontal key light: (SIZE,) or (n, SIZE) float32."""
        p = np.zeros(HeadParams.SIZE, np.float32)
        p[HeadParams.appearance] = 0.5
        p[HeadParams.lighting] = (0.4, 0.35, 0.9, 0.45, 0.3)
        return p if n is None else np.tile(p, (n, 1))


PARAM_NAMES = tuple([f"id{i:02d}" for i in range(HeadParams.identity.stop)] + list(EXPRESSION_UNITS)
                    + list(HeadParams.APPEARANCE) + list(HeadParams.LIGHTING))


def sample_params(rng: np.random.Generator, n: int, expression: bool = True) -> np.ndarray:
    """(n, SIZE) float32 random heads: identity ~ N(0, 1) clipped to +-2.5, FFHQ-like expression frequencies
    (about half smile, some open mouths, rare blinks), varied skin, hair, eyes and light. Independent of pose:
    the dataset writer adds any pose correlation."""
    p = np.zeros((n, HeadParams.SIZE), np.float32)
    p[:, HeadParams.identity] = np.clip(rng.standard_normal((n, HeadParams.identity.stop)), -2.5, 2.5)
    if expression:
        e = np.zeros((n, len(EXPRESSION_UNITS)))
        units = {name: i for i, name in enumerate(EXPRESSION_UNITS)}

        def some(name, rate, low, high):
            e[:, units[name]] = (rng.uniform(size=n) < rate) * rng.uniform(low, high, n)

        smile = (rng.uniform(size=n) < 0.5) * rng.uniform(0.2, 1.0, n)
        e[:, units["smile_l"]] = np.clip(smile + rng.normal(0, 0.08, n) * (smile > 0), 0, 1)
        e[:, units["smile_r"]] = np.clip(smile + rng.normal(0, 0.08, n) * (smile > 0), 0, 1)
        some("jaw_open", 0.35, 0.0, 0.45)
        blink = (rng.uniform(size=n) < 0.04) * rng.uniform(0.6, 1.0, n)
        e[:, units["blink_l"]] = e[:, units["blink_r"]] = blink
        some("brow_raise", 0.2, 0.0, 0.8)
        some("brow_down", 0.1, 0.0, 0.6)
        some("mouth_funnel", 0.05, 0.0, 0.6)
        some("mouth_pucker", 0.05, 0.0, 0.6)
        some("frown", 0.08, 0.0, 0.6)
        some("eye_wide", 0.1, 0.0, 0.6)
        some("eye_squint", 0.15, 0.0, 0.6)
        some("cheek_puff", 0.03, 0.0, 0.5)
        gaze = rng.normal(0, 0.25, (n, 2))
        e[:, units["gaze_left"]], e[:, units["gaze_right"]] = np.clip(gaze[:, 0], 0, 1), np.clip(-gaze[:, 0], 0, 1)
        e[:, units["gaze_up"]], e[:, units["gaze_down"]] = np.clip(gaze[:, 1], 0, 1), np.clip(-gaze[:, 1], 0, 1)
        p[:, HeadParams.expression] = e
    tone = rng.beta(1.0, 2.2, n)  # skin_tone (palette position, light to deep); darker skin, darker hair and eyes
    p[:, HeadParams.appearance] = np.stack([
        tone,
        rng.uniform(0, 1, n),                                        # skin_red
        rng.uniform(0, 1, n),                                        # lip_tint
        rng.beta(4, 2, n),                                           # brow_density
        tone + (1 - tone) * rng.beta(1.2, 0.8, n),                   # hair_color (palette: blond to black)
        (rng.uniform(size=n) < 0.85) * rng.uniform(0.3, 1.0, n),     # hair_length (0: shaved)
        0.8 * tone + (1 - 0.8 * tone) * rng.beta(0.8, 0.8, n),       # iris_color (palette: blue to dark brown)
    ], 1)
    p[:, HeadParams.lighting] = np.stack([
        rng.normal(0, 0.7, n),                         # light_azimuth (rad)
        rng.uniform(-0.2, 0.9, n),                     # light_elevation (rad)
        rng.uniform(0.8, 1.4, n),                      # light_intensity
        rng.uniform(0.12, 0.4, n),                     # ambient
        rng.uniform(0, 1, n),                          # light_warmth
    ], 1)
    return p


def triangle_incidence(triangles: np.ndarray, num_vertices: int):
    """Sparse (vertices x triangles) matrix of ones where a vertex is a corner of a triangle."""
    from scipy.sparse import csr_matrix

    t = triangles.reshape(-1)
    return csr_matrix((np.ones(t.size, np.float32), (t, np.arange(t.size) // 3)), shape=(num_vertices, len(triangles)))


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray, incidence=None) -> np.ndarray:
    """Area-weighted unit vertex normals (M, 3); ``incidence`` from ``triangle_incidence`` (made if not given)."""
    if incidence is None:
        incidence = triangle_incidence(triangles, len(vertices))
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    n = incidence @ np.cross(b - a, c - a)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _check_params(params) -> np.ndarray:
    p = np.asarray(params, dtype=np.float32)
    if p.shape[-1:] != (HeadParams.SIZE,) or p.ndim > 2:
        raise HeadModelError(f"head parameters must have shape ({HeadParams.SIZE},) or (N, {HeadParams.SIZE}), "
                             f"got {p.shape}")
    return p


class HeadModel:
    """The shipped head model: mean mesh, identity/expression/hair bases, render topology, masks, landmark map."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.meta = json.loads(str(arrays["meta"]))
        self.mean = arrays["mean"].astype(np.float32)
        self.basis = np.concatenate([arrays["identity_basis"], arrays["expression_basis"],
                                     arrays["hair_offset"][None]]).astype(np.float32).reshape(-1, self.mean.size)
        self.triangles = arrays["triangles"]
        for name in ("render_vertex", "render_uv", "render_material", "render_triangles", "eye_coords",
                     "occlusion", "masks", "landmark_vertex", "jaw_candidates"):
            setattr(self, name, arrays[name])
        if list(self.meta["expression_units"]) != list(EXPRESSION_UNITS) or \
                len(arrays["identity_basis"]) != HeadParams.identity.stop:
            raise HeadModelError("head model file does not match this code's parameter layout; rebuild it with "
                                 "python -m training.synthetic.build_head_model")

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_PATH) -> "HeadModel":
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls({k: f[k] for k in f.files})
        except (OSError, KeyError, ValueError) as e:
            raise HeadModelError(f"cannot read head model {path}: {e}") from None

    @property
    def num_vertices(self) -> int:
        return len(self.mean)

    def vertices(self, params) -> np.ndarray:
        """World-space vertices (M, 3) for one parameter vector, or (N, M, 3) for a batch."""
        p = _check_params(params)
        weights = np.concatenate([p[..., HeadParams.identity], p[..., HeadParams.expression],
                                  p[..., HeadParams.index("hair_length"), None]], -1)
        return (self.mean.reshape(-1) + weights @ self.basis).reshape(p.shape[:-1] + self.mean.shape)

    @cached_property
    def _incidence(self):
        return triangle_incidence(self.triangles, self.num_vertices)

    def normals(self, vertices: np.ndarray) -> np.ndarray:
        """Area-weighted unit vertex normals (M, 3) of one vertex array (the neck cap is left out)."""
        return vertex_normals(vertices, self.triangles, self._incidence)

    def landmarks_from_vertices(self, vertices: np.ndarray, label=None) -> np.ndarray:
        """68 x 3 dlib-ordered landmarks of one vertex array, seen from the EG3D camera ``label`` (25 floats;
        default: the frontal camera). The jaw contour (points 0-16) depends on the view: each point takes, among
        its candidate vertices (a horizontal strip from the cheek to the jaw angle), the one furthest out on its
        side of the face in the image, i.e. the silhouette on the side turned away and the jaw edge on the other."""
        cam2world = FRONTAL_CAM2WORLD if label is None else np.asarray(label, np.float64).reshape(25)[:16]
        cam2world = cam2world.reshape(4, 4)
        lm = vertices[np.maximum(self.landmark_vertex, 0)].astype(np.float64)
        cand = vertices[np.maximum(self.jaw_candidates, 0)].astype(np.float64) - cam2world[:3, 3]
        across = (cand @ cam2world[:3, 0]) / (cand @ cam2world[:3, 2])  # image x / focal
        side = np.sign(np.arange(17) - 8)[:, None]
        best = np.where(self.jaw_candidates >= 0, side * across, -np.inf).argmax(1)
        lm[:17] = vertices[self.jaw_candidates[np.arange(17), best]]
        return lm.astype(np.float32)

    def landmarks3d(self, params, label=None) -> np.ndarray:
        """68 x 3 world-space landmarks of one parameter vector (jaw contour chosen for ``label``)."""
        return self.landmarks_from_vertices(self.vertices(params), label)


@lru_cache(maxsize=1)
def default_model() -> HeadModel:
    """The shipped head model, loaded once per process."""
    return HeadModel.load()


def landmarks3d(params, label=None) -> np.ndarray:
    """68 x 3 world-space landmarks of one parameter vector with the shipped model (jaw contour for ``label``)."""
    return default_model().landmarks3d(params, label)
