"""EG3D's volume renderer: rays through pixel centres, tri-plane sampling, MipNeRF-style compositing,
importance sampling.

Same maths, tensor layouts and random draws as NVlabs' `training/volumetric_rendering`. Differences, none
visible in the outputs beyond float rounding: without autograd, rays are rendered in chunks (bounded memory,
cache-friendly) with every random number drawn up front in the official order; compositing sorts only depths and
densities and weights the colour samples where they are (no gather, concatenation or midpoint copy of 32-channel
colours); the planes are sampled channels-last.
"""

import torch
import torch.nn.functional as F

from editkit.models.eg3d.layers import EG3DError


def generate_planes():
    """The three tri-plane axes. As upstream (a known bug that trained weights depend on), the planes project
    points to (x, y), (x, z) and (z, x)."""
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)


def project_onto_planes(planes, coordinates):
    """2-D plane coordinates (N * n_planes, M, 2) of points (N, M, 3) for plane axes (n_planes, 3, 3)."""
    n, m, _ = coordinates.shape
    projections = torch.matmul(coordinates.unsqueeze(1), torch.linalg.inv(planes))
    return projections.reshape(n * planes.shape[0], m, 3)[..., :2]


def sample_from_planes(plane_axes, plane_features, coordinates, mode="bilinear", padding_mode="zeros", box_warp=None):
    """Bilinear features (N, n_planes, M, C) at points (N, M, 3) from planes (N, n_planes, C, H, W).

    The box of side `box_warp` around the origin maps onto the planes; the result is a transposed view.
    """
    n, n_planes, channels, height, width = plane_features.shape
    m = coordinates.shape[1]
    grid = project_onto_planes(plane_axes, (2 / box_warp) * coordinates).unsqueeze(1)
    features = F.grid_sample(plane_features.reshape(n * n_planes, channels, height, width), grid.float(), mode=mode,
                             padding_mode=padding_mode, align_corners=False)
    return features.view(n, n_planes, channels, m).transpose(2, 3)


def get_ray_limits_box(rays_o, rays_d, box_side_length):
    """Entry and exit distances (..., 1) of rays through the axis-aligned cube of side `box_side_length`;
    -1 and -2 for rays that miss it."""
    shape = rays_o.shape
    origins = rays_o.detach().reshape(-1, 3)
    inv_dir = 1 / rays_d.detach().reshape(-1, 3)
    near_face = torch.where(inv_dir < 0, box_side_length / 2, -box_side_length / 2)
    t_near = (near_face - origins) * inv_dir  # per axis: distance to the slab's entry and exit planes
    t_far = (-near_face - origins) * inv_dir
    tmin, tmax = t_near[:, 0], t_far[:, 0]
    valid = torch.ones_like(tmin, dtype=torch.bool)
    for axis in (1, 2):
        valid &= ~((tmin > t_far[:, axis]) | (t_near[:, axis] > tmax))
        tmin = torch.maximum(tmin, t_near[:, axis])
        tmax = torch.minimum(tmax, t_far[:, axis])
    tmin = tmin.masked_fill(~valid, -1)
    tmax = tmax.masked_fill(~valid, -2)
    return tmin.reshape(*shape[:-1], 1), tmax.reshape(*shape[:-1], 1)


def linspace(start, stop, num):
    """`num` evenly spaced tensors from `start` to `stop` inclusive: shape (num, *start.shape)."""
    steps = torch.arange(num, dtype=torch.float32, device=start.device) / (num - 1)
    return start[None] + steps.reshape(-1, *[1] * start.ndim) * (stop - start)[None]


class RaySampler(torch.nn.Module):
    """One ray per pixel centre for OpenCV cam2world matrices and normalised intrinsics."""

    def forward(self, cam2world_matrix, intrinsics, resolution):
        """(origins, directions), each (N, resolution**2, 3); ray r = row * resolution + column."""
        n, m = cam2world_matrix.shape[0], resolution ** 2
        device = cam2world_matrix.device
        cam_locs_world = cam2world_matrix[:, :3, 3]
        fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
        cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
        centres = torch.arange(resolution, dtype=torch.float32, device=device) * (1. / resolution) + (0.5 / resolution)
        x_cam = centres.repeat(resolution).expand(n, m)
        y_cam = centres.repeat_interleave(resolution).expand(n, m)
        z_cam = torch.ones((n, m), device=device)
        x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
        y_lift = (y_cam - cy) / fy * z_cam
        cam_rel_points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
        world_rel_points = torch.bmm(cam2world_matrix, cam_rel_points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
        ray_dirs = F.normalize(world_rel_points - cam_locs_world[:, None, :], dim=2)
        return cam_locs_world.unsqueeze(1).expand(-1, m, -1), ray_dirs


class MipRayMarcher2(torch.nn.Module):
    """Alpha compositing of samples (..., S, C) along rays, densities through softplus(sigma - 1)."""

    def opacity_weights(self, densities, depths, rendering_options):
        """Compositing weights (..., S - 1, 1) of the intervals between consecutive (sorted) samples."""
        if rendering_options["clamp_mode"] != "softplus":
            raise EG3DError(f"MipRayMarcher2 supports clamp_mode='softplus' only, got "
                            f"{rendering_options['clamp_mode']!r}")
        deltas = depths[..., 1:, :] - depths[..., :-1, :]
        densities_mid = F.softplus((densities[..., :-1, :] + densities[..., 1:, :]) / 2 - 1)
        alpha = 1 - torch.exp(-densities_mid * deltas)
        transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1, :]), 1 - alpha + 1e-10], -2), -2)
        return alpha * transmittance[..., :-1, :]

    def integrate(self, colors, densities, depths, rendering_options):
        """(rgb in [-1, 1], depth, weights) for samples in any order along each ray.

        `colors`: (..., S, C), or a list of such blocks that concatenate along S (coarse and fine samples).
        Depth is sum(w * d) / sum(w), not clamped (inf where 0 / 0); weights come in depth order.
        """
        depths, order = torch.sort(depths, dim=-2)
        weights = self.opacity_weights(torch.gather(densities, -2, order), depths, rendering_options)
        # Interval i blends samples i and i+1, so sample j carries (w_j-1 + w_j) / 2; scattering these back to
        # the input order composites the colours without sorting or averaging them.
        padded = F.pad(weights, (0, 0, 1, 1))
        sample_weights = (padded[..., :-1, :] + padded[..., 1:, :]) / 2
        weight_total = weights.sum(-2)
        # Official: sum / total, with 0 / 0 -> inf. The where() keeps that forward value without the NaN gradient
        # that 0 / 0 sends back into a masked depth loss.
        covered = weight_total > 0
        composite_depth = torch.where(covered, (depths * sample_weights).sum(-2) / torch.where(covered, weight_total, 1),
                                      float("inf"))
        input_order = torch.zeros_like(sample_weights).scatter(-2, order, sample_weights).transpose(-1, -2)
        composite_rgb = 0
        for block in ([colors] if isinstance(colors, torch.Tensor) else colors):
            count = block.shape[-2]
            composite_rgb = composite_rgb + torch.matmul(input_order[..., :count], block).squeeze(-2)
            input_order = input_order[..., count:]
        if rendering_options.get("white_back", False):
            composite_rgb = composite_rgb + 1 - weight_total
        return composite_rgb * 2 - 1, composite_depth, weights

    def forward(self, colors, densities, depths, rendering_options):
        """(rgb, depth clamped to the range of `depths`, weights), as the official marcher."""
        composite_rgb, composite_depth, weights = self.integrate(colors, densities, depths, rendering_options)
        return composite_rgb, torch.clamp(composite_depth, torch.min(depths), torch.max(depths)), weights


class ImportanceRenderer(torch.nn.Module):
    """Stratified samples along each ray, then importance samples where the coarse pass found density."""

    points_per_chunk = 2 ** 16  # decoder points per chunk of rays (all batch elements together)

    def __init__(self):
        super().__init__()
        self.ray_marcher = MipRayMarcher2()
        self.register_buffer("plane_axes", generate_planes(), persistent=False)

    def forward(self, planes, decoder, ray_origins, ray_directions, rendering_options):
        """(features (N, M, C), depth (N, M, 1), total weight (N, M, 1)) for planes (N, 3, C, H, W)."""
        opts = rendering_options
        depths_coarse = self.coarse_depths(ray_origins, ray_directions, opts)
        n, m, n_coarse, _ = depths_coarse.shape
        n_fine = opts["depth_resolution_importance"]
        device = ray_origins.device
        # The official renderer draws these in its coarse pass, importance sampling and fine pass, and nothing
        # else draws in between: drawing them now keeps torch's generator in step while chunks are rendered.
        noisy = opts.get("density_noise", 0) > 0
        coarse_noise = torch.randn(n, m, n_coarse, 1, device=device) if noisy else None
        uniforms = torch.rand(n * m, n_fine, device=device).view(n, m, n_fine) if n_fine > 0 else None
        fine_noise = torch.randn(n, m, n_fine, 1, device=device) if noisy and n_fine > 0 else None

        # grid_sample gathers the C features of a plane texel together: store each plane channels-last (one copy)
        planes = planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        # Chunks only without autograd: it keeps every chunk's activations anyway, and each chunk's gradient for
        # the planes would be a full-size tensor.
        step = m if torch.is_grad_enabled() else max(1, self.points_per_chunk // (n * (n_coarse + n_fine)))
        chunks = []
        for start in range(0, m, step):
            per_ray = [None if t is None else t[:, start:start + step] for t in
                       (ray_origins, ray_directions, depths_coarse, coarse_noise, uniforms, fine_noise)]
            chunks.append(self.render_rays(planes, decoder, *per_ray, opts))
        rgb, depth, weight_total, lo, hi = (torch.cat(parts, dim=1) for parts in zip(*chunks))
        return rgb, torch.clamp(depth, lo.min(), hi.max()), weight_total

    def render_rays(self, planes, decoder, ray_origins, ray_directions, depths_coarse, coarse_noise, uniforms,
                    fine_noise, opts):
        """Render one chunk of rays: (rgb, unclamped depth, total weight, min depth, max depth)."""
        colors, densities = self.decode_samples(planes, decoder, ray_origins, ray_directions, depths_coarse,
                                                coarse_noise, opts)
        depths = depths_coarse
        if uniforms is not None:
            with torch.no_grad():
                weights = self.ray_marcher.opacity_weights(densities, depths_coarse, opts)
                depths_fine = self.sample_importance(depths_coarse, weights, uniforms.shape[-1], uniforms)
            colors_fine, densities_fine = self.decode_samples(planes, decoder, ray_origins, ray_directions,
                                                              depths_fine, fine_noise, opts)
            colors = [colors, colors_fine]
            densities = torch.cat([densities, densities_fine], dim=-2)
            depths = torch.cat([depths_coarse, depths_fine], dim=-2)
        rgb, depth, weights = self.ray_marcher.integrate(colors, densities, depths, opts)
        lo, hi = depths.detach().amin(dim=(2, 3)), depths.detach().amax(dim=(2, 3))
        return rgb, depth, weights.sum(-2), lo, hi

    def decode_samples(self, planes, decoder, ray_origins, ray_directions, depths, noise, opts):
        """Colours (N, R, S, C) and densities (N, R, S, 1) at the samples `depths` (N, R, S, 1) along rays."""
        n, r, s, _ = depths.shape
        coordinates = (ray_origins.unsqueeze(-2) + depths * ray_directions.unsqueeze(-2)).reshape(n, -1, 3)
        directions = ray_directions.unsqueeze(-2).expand(-1, -1, s, -1).reshape(n, -1, 3)
        out = self.run_model(planes, decoder, coordinates, directions, opts,
                             None if noise is None else noise.reshape(n, r * s, 1))
        return out["rgb"].reshape(n, r, s, -1), out["sigma"].reshape(n, r, s, 1)

    def run_model(self, planes, decoder, sample_coordinates, sample_directions, options, noise=None):
        """Decode points: {'rgb': (N, M, C), 'sigma': (N, M, 1)}; `density_noise` adds `noise` (or fresh
        normal noise) times its value to sigma."""
        features = sample_from_planes(self.plane_axes, planes, sample_coordinates, padding_mode="zeros",
                                      box_warp=options["box_warp"])
        out = decoder(features, sample_directions)
        std = options.get("density_noise", 0)
        if std > 0:
            noise = torch.randn_like(out["sigma"]) if noise is None else noise
            out["sigma"] = out["sigma"] + noise * std
        return out

    def coarse_depths(self, ray_origins, ray_directions, opts):
        """Stratified depths (N, M, D, 1): one jittered sample per interval of [ray_start, ray_end]."""
        if opts["ray_start"] == opts["ray_end"] == "auto":
            ray_start, ray_end = get_ray_limits_box(ray_origins, ray_directions, box_side_length=opts["box_warp"])
            valid = ray_end > ray_start
            if torch.any(valid).item():  # as upstream: missed rays get [min start, max start]
                ray_start[~valid] = ray_start[valid].min()
                ray_end[~valid] = ray_start[valid].max()
            return self.sample_stratified(ray_origins, ray_start, ray_end, opts["depth_resolution"],
                                          opts["disparity_space_sampling"])
        return self.sample_stratified(ray_origins, opts["ray_start"], opts["ray_end"], opts["depth_resolution"],
                                      opts["disparity_space_sampling"])

    def sample_stratified(self, ray_origins, ray_start, ray_end, depth_resolution, disparity_space_sampling=False):
        """Depths (N, M, D, 1) spaced uniformly in depth (or in disparity), jittered within each interval."""
        n, m, _ = ray_origins.shape
        device = ray_origins.device
        if disparity_space_sampling:
            t = torch.linspace(0, 1, depth_resolution, device=device).reshape(1, 1, depth_resolution, 1)
            t = t.repeat(n, m, 1, 1)
            t = t + torch.rand_like(t) * (1 / (depth_resolution - 1))
            return 1. / (1. / ray_start * (1. - t) + 1. / ray_end * t)
        if isinstance(ray_start, torch.Tensor):
            depths = linspace(ray_start, ray_end, depth_resolution).permute(1, 2, 0, 3)
            delta = (ray_end - ray_start) / (depth_resolution - 1)
            # rand_like keeps the permuted memory layout, and so the official order of the draws
            return depths + torch.rand_like(depths) * delta[..., None]
        depths = torch.linspace(ray_start, ray_end, depth_resolution, device=device).reshape(1, 1, depth_resolution, 1)
        delta = (ray_end - ray_start) / (depth_resolution - 1)
        return depths + torch.rand(n, m, depth_resolution, 1, device=device) * delta

    def sample_importance(self, z_vals, weights, n_importance, uniforms=None):
        """Depths (N, M, n_importance, 1) drawn from the smoothed coarse weights (no gradient)."""
        with torch.no_grad():
            n, m, n_samples, _ = z_vals.shape
            z_vals = z_vals.reshape(n * m, n_samples)
            weights = weights.reshape(n * m, 1, -1).float()
            weights = F.avg_pool1d(F.max_pool1d(weights, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
            z_vals_mid = 0.5 * (z_vals[:, :-1] + z_vals[:, 1:])
            u = None if uniforms is None else uniforms.reshape(n * m, n_importance)
            return self.sample_pdf(z_vals_mid, weights[:, 1:-1], n_importance, u=u).reshape(n, m, n_importance, 1)

    def sample_pdf(self, bins, weights, n_importance, det=False, eps=1e-5, u=None):
        """Inverse-CDF samples (rays, n_importance) from piecewise-constant `weights` over `bins`.

        `u`: the uniforms to use (default: evenly spaced if `det`, else freshly drawn).
        """
        n_rays, n_bins = weights.shape
        weights = weights + eps
        cdf = torch.cumsum(weights / torch.sum(weights, -1, keepdim=True), -1)
        cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
        if u is None and det:
            u = torch.linspace(0, 1, n_importance, device=bins.device).expand(n_rays, n_importance)
        elif u is None:
            u = torch.rand(n_rays, n_importance, device=bins.device)
        u = u.contiguous()
        inds = torch.searchsorted(cdf, u, right=True)
        below = torch.clamp_min(inds - 1, 0)
        above = torch.clamp_max(inds, n_bins)
        inds_sampled = torch.stack([below, above], -1).view(n_rays, 2 * n_importance)
        cdf_g = torch.gather(cdf, 1, inds_sampled).view(n_rays, n_importance, 2)
        bins_g = torch.gather(bins, 1, inds_sampled).view(n_rays, n_importance, 2)
        denom = cdf_g[..., 1] - cdf_g[..., 0]
        denom = torch.where(denom < eps, torch.ones_like(denom), denom)  # empty bins are never drawn
        return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])
