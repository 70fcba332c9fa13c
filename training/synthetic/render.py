"""Render demo-world heads at EG3D cameras with OpenGL (moderngl, headless EGL; Mesa llvmpipe on a CPU).

``HeadRenderer(resolution).render(params, label)`` returns

* ``image``: float32 (H, W, 3) in [0, 1], anti-aliased (2 x 2 supersampling, box filter) over ``background``;
* ``mask``: float32 (H, W) pixel coverage in [0, 1] (0 on the background);
* ``depth``: float32 (H, W) EG3D's convention: the distance t along each pixel's unit-length ray from the camera
  centre (the ray-marched depth of EG3D's renderer, not the camera z). Where the head only partly covers a pixel it
  is the mean over the covered samples; where it covers nothing it is ``background_depth`` (EG3D's ray_end, 3.3);
* ``landmarks2d``: float32 (68, 2) pixel coordinates (x right, y down, pixel centres at +0.5, as
  ``editkit.cameras.project``); ``landmarks3d``: float32 (68, 3) world coordinates (jaw contour chosen per view).

Rays pass through pixel centres and the principal point is the image centre, as in EG3D. Shading: skin-tone albedo
with painted lips, brows, eyelids and a short-hair cap, eyes with iris and pupil, a wrapped-Lambert key light and a
sky/ground ambient term darkened by baked ambient occlusion, a little specular, output in sRGB.
"""

from __future__ import annotations

import numpy as np

from training.synthetic.head_model import HeadModel, HeadModelError, HeadParams, _check_params

RAY_END = 3.3

# Albedo palettes in sRGB, interpolated by the parameter in [0, 1], hand-picked. Skin: very light to deep brown.
# Hair: platinum blond to black. Iris: blue, grey-green, hazel, brown, dark brown.
SKIN_PALETTE = ((0.97, 0.84, 0.76), (0.93, 0.76, 0.64), (0.87, 0.67, 0.53), (0.78, 0.57, 0.42),
                (0.66, 0.45, 0.31), (0.52, 0.34, 0.23), (0.39, 0.25, 0.17), (0.27, 0.17, 0.12))
HAIR_PALETTE = ((0.80, 0.70, 0.50), (0.62, 0.45, 0.28), (0.45, 0.30, 0.18), (0.26, 0.17, 0.11),
                (0.12, 0.09, 0.07), (0.05, 0.045, 0.04))
IRIS_PALETTE = ((0.30, 0.45, 0.65), (0.42, 0.48, 0.38), (0.45, 0.33, 0.18), (0.28, 0.17, 0.09),
                (0.14, 0.08, 0.05))

VERTEX_SHADER = """
#version 330
uniform mat4 clip_from_world;
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
in float in_material;
in vec3 in_eye;
in float in_occlusion;
out vec3 v_pos;
out vec3 v_normal;
out vec2 v_uv;
flat out int v_material;
out vec3 v_eye;
out float v_occlusion;
void main() {
    gl_Position = clip_from_world * vec4(in_pos, 1.0);
    v_pos = in_pos;
    v_normal = in_normal;
    v_uv = in_uv;
    v_material = int(in_material + 0.5);
    v_eye = in_eye;
    v_occlusion = in_occlusion;
}
"""

FRAGMENT_SHADER = """
#version 330
uniform sampler2D masks;        // r: lips, g: brows, b: eyelids, a: hair
uniform vec3 camera;
uniform vec3 light_dir;
uniform vec3 light_rgb;
uniform vec3 ambient_rgb;
uniform vec3 skin;
uniform vec3 lip;
uniform vec3 hair;
uniform vec3 iris;
uniform float brow_density;
uniform float hair_density;
in vec3 v_pos;
in vec3 v_normal;
in vec2 v_uv;
flat in int v_material;
in vec3 v_eye;
in float v_occlusion;
layout(location = 0) out vec4 out_color;
layout(location = 1) out vec2 out_depth;

vec3 to_linear(vec3 c) { return pow(c, vec3(2.2)); }

float hash(vec3 p) { return fract(sin(dot(floor(p), vec3(12.9898, 78.233, 37.719))) * 43758.5453); }

float layer(vec3 p, vec2 u) {  // bilinear value noise in the xy plane at integer z
    return mix(mix(hash(p), hash(p + vec3(1, 0, 0)), u.x), mix(hash(p + vec3(0, 1, 0)), hash(p + vec3(1, 1, 0)), u.x),
               u.y);
}

float value_noise(vec3 p) {  // trilinear value noise, for hair texture
    vec3 f = fract(p), u = f * f * (3.0 - 2.0 * f);
    return mix(layer(p, u.xy), layer(p + vec3(0, 0, 1), u.xy), u.z);
}

void main() {
    vec3 n = normalize(v_normal);
    vec3 view = normalize(camera - v_pos);
    if (dot(n, view) < 0.0 && v_material != 6) n = -n;   // seen from inside (mouth cavity)
    vec3 albedo;
    float shine = 0.03, rough = 24.0, wrap = 0.05;
    if (v_material == 0) {                                      // skin
        vec4 m = texture(masks, v_uv);
        albedo = mix(skin, lip, m.r);
        albedo *= mix(1.0, 0.9, m.b);
        albedo = mix(albedo, hair, m.g * brow_density);
        float cover = 0.0;
        if (m.a > 0.01 && hair_density > 0.0) {  // noise only where there is hair (it is the costly part)
            float strands = value_noise(v_pos * vec3(180.0, 60.0, 180.0));
            cover = smoothstep(0.3, 0.7, m.a + 0.3 * (value_noise(v_pos * 90.0) - 0.5)) * hair_density;
            albedo = mix(albedo, hair * (0.6 + 0.8 * strands) + 0.01 * strands, cover);
        }
        shine = mix(mix(0.045, 0.07, m.r), 0.03, cover);
        rough = mix(16.0, 8.0, cover);
    } else if (v_material == 1) {                               // eye: sclera, iris, pupil by angle from the axis
        float a = acos(clamp(normalize(v_eye).z, -1.0, 1.0));
        float ring = smoothstep(0.40, 0.46, a);
        albedo = mix(iris * (0.75 + 0.5 * smoothstep(0.15, 0.40, a)), vec3(0.78, 0.74, 0.70), ring);
        albedo = mix(vec3(0.02), albedo, smoothstep(0.14, 0.18, a));
        albedo *= 1.0 - 0.5 * (1.0 - smoothstep(0.36, 0.44, a)) * smoothstep(0.32, 0.42, a);  // limbal ring
        shine = 0.25; rough = 200.0; wrap = 0.1;
    } else if (v_material == 2) { albedo = vec3(0.78, 0.75, 0.66); shine = 0.1; }    // teeth
    else if (v_material == 3) { albedo = to_linear(vec3(0.50, 0.22, 0.22)); }        // tongue
    else if (v_material == 4) { albedo = mix(hair, skin, 0.3) * 0.3; shine = 0.0; }  // eyelashes
    else if (v_material == 5) { albedo = to_linear(vec3(0.35, 0.10, 0.10)); shine = 0.0; }  // mouth cavity
    else { albedo = skin * 0.3; n = vec3(0.0, -1.0, 0.0); shine = 0.0; }            // neck cap
    // wrapped Lambert, wrapped further in red on skin: a cheap stand-in for light scattered under the skin
    vec3 wraps = v_material == 0 ? vec3(wrap + 0.2, wrap, wrap - 0.05) : vec3(wrap);
    vec3 diffuse = max((dot(n, light_dir) + wraps) / (1.0 + wraps), 0.0);
    float sky = 0.75 + 0.25 * n.y;
    vec3 lit = albedo * (ambient_rgb * sky * v_occlusion + light_rgb * diffuse * mix(1.0, v_occlusion, 0.5));
    vec3 h = normalize(light_dir + view);
    lit += shine * light_rgb * pow(max(dot(n, h), 0.0), rough) * v_occlusion * float(dot(n, light_dir) > 0.0);
    lit = mix(lit, 0.8 + 0.2 * (1.0 - exp(-(lit - 0.8) / 0.2)), step(0.8, lit));  // soft shoulder, no clipping
    out_color = vec4(pow(clamp(lit, 0.0, 1.0), vec3(1.0 / 2.2)), 1.0);
    out_depth = vec2(length(v_pos - camera), 1.0);
}
"""


# Second pass: average each k x k block of samples (texelFetch), composite over the background, divide the depth sum
# by the coverage. Output: sRGB image and (depth, coverage) at the final resolution.
RESOLVE_VERTEX_SHADER = """
#version 330
in vec2 in_corner;
void main() { gl_Position = vec4(in_corner, 0.0, 1.0); }
"""

RESOLVE_FRAGMENT_SHADER = """
#version 330
uniform sampler2D color;      // premultiplied sRGB colour, alpha = coverage
uniform sampler2D ray_depth;  // (t, 1) where covered, (0, 0) elsewhere
uniform int k;
uniform vec3 background;
uniform float background_depth;
layout(location = 0) out vec4 out_color;
layout(location = 1) out vec2 out_depth;
void main() {
    ivec2 base = ivec2(gl_FragCoord.xy) * k;
    vec4 c = vec4(0.0);
    vec2 d = vec2(0.0);
    for (int i = 0; i < k; ++i) {
        for (int j = 0; j < k; ++j) {
            c += texelFetch(color, base + ivec2(i, j), 0);
            d += texelFetch(ray_depth, base + ivec2(i, j), 0).rg;
        }
    }
    c /= float(k * k);
    out_color = vec4(c.rgb + (1.0 - c.a) * background, 1.0);
    out_depth = vec2(d.y > 0.0 ? d.x / d.y : background_depth, c.a);
}
"""


class RendererError(HeadModelError):
    """No OpenGL context could be created, or a camera label has the wrong shape."""


def palette(colours, t: float) -> np.ndarray:
    """Linear-light RGB at position t in [0, 1] along an sRGB palette."""
    c = np.asarray(colours, np.float64)
    x = np.clip(t, 0, 1) * (len(c) - 1)
    i = min(int(x), len(c) - 2)
    return ((1 - (x - i)) * c[i] + (x - i) * c[i + 1]) ** 2.2


def clip_from_world(label, near: float = 0.5, far: float = 6.0) -> np.ndarray:
    """OpenGL clip matrix (4, 4) for an EG3D label: OpenCV camera, normalised focal f, principal point 0.5."""
    label = np.asarray(label, np.float64).reshape(25)
    cam2world, f = label[:16].reshape(4, 4), label[16]
    cx, cy = label[18], label[21]
    projection = np.array([[2 * f, 0, 2 * cx - 1, 0],
                           [0, -2 * f, 1 - 2 * cy, 0],
                           [0, 0, (far + near) / (far - near), -2 * far * near / (far - near)],
                           [0, 0, 1, 0]])
    return projection @ np.linalg.inv(cam2world)


def project(points: np.ndarray, label, resolution: int) -> np.ndarray:
    """World points (P, 3) to pixel coordinates (P, 2) for one EG3D label (numpy twin of editkit.cameras.project)."""
    label = np.asarray(label, np.float64).reshape(25)
    cam2world, k = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    cam = (np.asarray(points, np.float64) - cam2world[:3, 3]) @ cam2world[:3, :3]
    uv = (cam / cam[:, 2:3]) @ k.T
    return (uv[:, :2] * resolution).astype(np.float32)


class HeadRenderer:
    """Headless OpenGL renderer of the head model; one instance holds one GL context (reuse it)."""

    def __init__(self, resolution: int = 128, model: HeadModel | None = None, antialias: bool = True,
                 background=(1.0, 1.0, 1.0), background_depth: float = RAY_END):
        import moderngl
        # Mesa's llvmpipe and triton (which torch loads lazily, e.g. on importing torchvision.ops) each bring an
        # LLVM; loading triton after an EGL context exists crashes the process (measured), so load it first.
        import torch._dynamo  # noqa: F401

        self.model = model or HeadModel.load()
        self.resolution, self.background_depth = int(resolution), float(background_depth)
        self.supersample = 2 if antialias else 1
        self.background = np.asarray(background, np.float32).reshape(3)
        try:
            self.ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as e:  # moderngl raises plain Exceptions for missing EGL/Mesa libraries
            raise RendererError(f"no headless OpenGL context ({e}); install the Debian packages libegl1 "
                                "libgl1-mesa-dri libegl-mesa0 libgbm1") from None
        with self.ctx:
            self._build()

    def _build(self):
        """GL objects: mesh buffers, mask texture, sample and output framebuffers, the two programs."""
        m = self.model
        self.program = self.ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        static = np.concatenate([m.render_uv, m.render_material[:, None], m.eye_coords[m.render_vertex],
                                 m.occlusion[m.render_vertex, None]], 1)
        self.static = self.ctx.buffer(static.astype("f4").tobytes())
        self.dynamic = self.ctx.buffer(reserve=len(m.render_vertex) * 24)
        self.index = self.ctx.buffer(m.render_triangles.astype("i4").tobytes())
        self.vao = self.ctx.vertex_array(self.program, [
            (self.dynamic, "3f 3f", "in_pos", "in_normal"),
            (self.static, "2f 1f 3f 1f", "in_uv", "in_material", "in_eye", "in_occlusion"),
        ], self.index)
        masks = np.ascontiguousarray(m.masks[::-1])  # GL textures start at the bottom row (v = 0)
        self.masks = self.ctx.texture(masks.shape[1::-1], 4, masks.tobytes())
        self.masks.build_mipmaps()
        self.program["masks"].value = 0
        k = self.supersample
        size, final = (self.resolution * k,) * 2, (self.resolution,) * 2
        self.samples = [self.ctx.texture(size, 4), self.ctx.texture(size, 2, dtype="f4")]
        self.fbo = self.ctx.framebuffer(self.samples, self.ctx.depth_renderbuffer(size))
        self.resolve = self.ctx.program(vertex_shader=RESOLVE_VERTEX_SHADER, fragment_shader=RESOLVE_FRAGMENT_SHADER)
        for name, value in (("color", 1), ("ray_depth", 2), ("k", k), ("background_depth", self.background_depth)):
            self.resolve[name].value = value
        self.resolve["background"].write(self.background.tobytes())
        corners = np.array([-1, -1, 3, -1, -1, 3], np.float32)  # one triangle covering the viewport
        self.quad = self.ctx.vertex_array(self.resolve, [(self.ctx.buffer(corners.tobytes()), "2f", "in_corner")])
        self.out = self.ctx.framebuffer([self.ctx.renderbuffer(final, 4), self.ctx.renderbuffer(final, 2, dtype="f4")])
        self.ctx.enable(self.ctx.CULL_FACE)  # the mesh is closed and wound outwards

    def _uniforms(self, params: np.ndarray, label: np.ndarray):
        p = dict(zip(HeadParams.APPEARANCE + HeadParams.LIGHTING,
                     params[HeadParams.appearance.start:HeadParams.lighting.stop].astype(np.float64)))
        skin = palette(SKIN_PALETTE, p["skin_tone"]) * (1 + 0.12 * (p["skin_red"] - 0.5) * np.array([1, -0.6, -0.6]))
        lip = skin * (np.array([0.86, 0.6, 0.6]) - 0.2 * p["lip_tint"] * np.array([0.1, 0.5, 0.4]))
        az, el = p["light_azimuth"], p["light_elevation"]
        warm = np.array([1.0, 0.93, 0.82]) ** (2 * p["light_warmth"])
        values = {
            "clip_from_world": clip_from_world(label).T, "camera": label[:16].reshape(4, 4)[:3, 3],
            "light_dir": (np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)),
            "light_rgb": p["light_intensity"] * warm, "ambient_rgb": p["ambient"] * np.array([0.95, 0.97, 1.0]),
            "skin": skin, "lip": lip, "hair": palette(HAIR_PALETTE, p["hair_color"]),
            "iris": palette(IRIS_PALETTE, p["iris_color"]), "brow_density": p["brow_density"],
            "hair_density": np.clip(p["hair_length"] * 4, 0, 1),
        }
        for name, value in values.items():
            self.program[name].write(np.asarray(value, np.float32).tobytes())

    def render(self, params, label) -> dict[str, np.ndarray]:
        """Render one parameter vector (SIZE,) at one EG3D camera label (25,); see the module docstring."""
        params = _check_params(params)
        label = np.asarray(label, np.float64).reshape(-1)
        if params.ndim != 1 or label.shape != (25,):
            raise RendererError(f"render takes one parameter vector and one 25-float label, got {params.shape} "
                                f"and {label.shape}; use render_batch for batches")
        m = self.model
        vertices = m.vertices(params)
        normals = m.normals(vertices)
        with self.ctx:  # make this renderer's context current (a process may hold several)
            rgb, depth_mask = self._draw(np.concatenate([vertices, normals], 1)[m.render_vertex], params, label)
        landmarks3d = m.landmarks_from_vertices(vertices, label)
        return {
            "image": rgb[::-1].astype(np.float32) / 255,  # GL rows go bottom-up
            "depth": depth_mask[::-1, :, 0].copy(),
            "mask": depth_mask[::-1, :, 1].copy(),
            "landmarks2d": project(landmarks3d, label, self.resolution),
            "landmarks3d": landmarks3d,
        }

    def _draw(self, vertex_data: np.ndarray, params: np.ndarray, label: np.ndarray):
        """Draw the samples, resolve them; returns the image (H, W, 3) uint8 and (depth, mask) (H, W, 2), both with
        OpenGL's bottom-up rows."""
        self.dynamic.write(vertex_data.astype("f4").tobytes())
        self._uniforms(params, label)
        self.fbo.use()
        self.masks.use(0)
        self.fbo.clear(0.0, 0.0, 0.0, 0.0)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.vao.render()
        self.out.use()
        self.ctx.disable(self.ctx.DEPTH_TEST)
        self.samples[0].use(1)
        self.samples[1].use(2)
        self.quad.render()
        r = self.resolution
        rgb = np.frombuffer(self.out.read(components=3, attachment=0, alignment=1), np.uint8).reshape(r, r, 3)
        depth_mask = np.frombuffer(self.out.read(components=2, attachment=1, dtype="f4"), np.float32)
        return rgb, depth_mask.reshape(r, r, 2)

    def render_batch(self, params, labels) -> dict[str, np.ndarray]:
        """Render (N, SIZE) parameters at (N, 25) labels; returns the same keys stacked along a first axis."""
        params, labels = _check_params(params), np.asarray(labels, np.float64)
        if params.ndim != 2 or labels.shape != (len(params), 25):
            raise RendererError(f"render_batch takes (N, {HeadParams.SIZE}) parameters and (N, 25) labels, got "
                                f"{params.shape} and {labels.shape}")
        out = [self.render(p, c) for p, c in zip(params, labels)]
        return {k: np.stack([o[k] for o in out]) for k in out[0]}

    def release(self):
        """Free the GL context now (it is also freed when the renderer is garbage collected)."""
        self.ctx.release()
