"""StyleGAN2 ops and networks as EG3D uses them, in pure PyTorch.

Constructor arguments, attribute names and state-dict keys follow NVlabs' `networks_stylegan2.py`, so official
weights load 1:1, and every constructor draws from torch's default generator in the official order (the same seed
gives the same initial weights). The custom CUDA ops are replaced by their pure-PyTorch equivalents, written
for speed on a CPU: activations are kept channels-last (oneDNN's fast layout), FIR upsampling runs as a strided
transposed convolution instead of zero insertion, 1x1 convolutions as matrix products, and bias, activation, gain
and clamp update temporaries in place when autograd does not track them. No layer modifies a tensor it did not
create, so backward works everywhere. fp16 options are accepted and ignored: the port computes in float32 (as
the official code does on a CPU).
"""

import copy
import functools
import inspect
import math

import torch
import torch.nn.functional as F

from editkit.errors import EditkitError


class EG3DError(EditkitError, ValueError):
    """An EG3D network got a configuration or an input it cannot handle."""


def record_init_kwargs(cls):
    """Class decorator: keep the constructor's arguments, by name, as `self.init_kwargs` (saved with weights)."""
    init = cls.__init__
    names = list(inspect.signature(init).parameters)[1:]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.init_kwargs = copy.deepcopy({**dict(zip(names, args)), **kwargs})

    cls.__init__ = __init__
    return cls


def check_shape(tensor, shape, name):
    """Raise EG3DError unless `tensor` has `shape` (None entries match any size)."""
    ok = isinstance(tensor, torch.Tensor) and tensor.ndim == len(shape) and all(
        want is None or got == want for got, want in zip(tensor.shape, shape))
    if not ok:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        want = ", ".join("N" if size is None else str(size) for size in shape)
        raise EG3DError(f"{name} must have shape ({want}), got {got}")


# ---------------------------------------------------------------------------------------------------------------
# Ops: bias + activation, FIR resampling, convolution with resampling, modulated convolution.

SQRT2 = math.sqrt(2)
# name -> (function, default alpha, default gain), as in the official bias_act.
ACTIVATIONS = {
    "linear": (None, 0.0, 1.0),
    "relu": (lambda x, alpha: F.relu(x), 0.0, SQRT2),
    "lrelu": (lambda x, alpha: F.leaky_relu(x, alpha), 0.2, SQRT2),
    "tanh": (lambda x, alpha: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, alpha: torch.sigmoid(x), 0.0, 1.0),
    "elu": (lambda x, alpha: F.elu(x), 0.0, 1.0),
    "selu": (lambda x, alpha: F.selu(x), 0.0, 1.0),
    "softplus": (lambda x, alpha: F.softplus(x), 0.0, 1.0),
    "swish": (lambda x, alpha: torch.sigmoid(x) * x, 0.0, SQRT2),
}


def activation_gain(act: str) -> float:
    """The default output gain of an activation ('lrelu' -> sqrt(2))."""
    if act not in ACTIVATIONS:
        raise EG3DError(f"unknown activation '{act}' (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[act][2]


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, inplace=False):
    """Add bias `b` along `dim`, apply `act`, scale by `gain`, clamp to [-clamp, clamp] (official bias_act).

    `inplace`: `x` is a temporary the caller no longer needs; updated in place unless autograd tracks it (in-place
    ops on views make autograd copy whole tensors).
    """
    func, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = def_alpha if alpha is None else float(alpha)
    gain = def_gain if gain is None else float(gain)
    b = None if b is None else b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    source, inplace = x, inplace and not x.requires_grad
    if act == "lrelu" and gain > 0:  # lrelu(v) * g == lrelu(v * g) for g > 0: activate in place, last
        if inplace:
            x = x if b is None else x.add_(b)
            x = x if gain == 1 else x.mul_(gain)
        else:
            x = x * gain if b is None else torch.add(b * gain, x, alpha=gain)
        x = F.leaky_relu_(x, alpha)
    else:
        if b is not None:
            x = x.add_(b) if inplace else x + b
        if func is not None:
            x = func(x, alpha)
        if gain != 1:
            x = x * gain
    if clamp is not None and clamp >= 0:
        # in place into a tensor of ours, unless autograd saved it (leaky_relu_ keeps its output for backward)
        ours = inplace or x is not source
        x = x.clamp_(-clamp, clamp) if ours and not x.requires_grad else x.clamp(-clamp, clamp)
    return x


class _Softplus(torch.autograd.Function):
    """log(1 + e^x) as log(1 + e^-|x|) + (x + |x|) / 2: about 3x faster than torch's kernel on CPUs."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        magnitude = x.abs()
        return magnitude.neg().exp_().add_(1).log_().add_(x, alpha=0.5).add_(magnitude, alpha=0.5)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


def softplus(x):
    """log(1 + e^x) within 1e-6 of `torch.nn.functional.softplus` (absolute: tiny outputs lose relative
    precision, so use it where a layer follows, not for densities)."""
    return _Softplus.apply(x)


class Softplus(torch.nn.Module):
    """`torch.nn.Softplus()` computed by `softplus` (no parameters, so state dicts are unchanged)."""

    def forward(self, x):
        return softplus(x)


def setup_filter(f, normalize=True, flip_filter=False, gain=1, separable=None):
    """A float32 FIR filter for `upfirdn2d`: 1-D taps become their 2-D outer product unless 8 or more taps."""
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _padding4(padding):
    """(x0, x1, y0, y1) from an int, (x, y) or (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return tuple(padding)


def _filter_size(f):
    """(width, height) of a filter; 1-D filters are separable (same taps along both axes)."""
    return (1, 1) if f is None else (f.shape[-1], f.shape[0])


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Upsample by zero insertion, pad (negative crops), convolve with FIR filter `f`, keep every `down`-th pixel.

    Same definition as the official op. A 1-D `f` is applied separably along x then y.
    """
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    if f.ndim == 1:
        taps = f * gain ** 0.5
        x = _upfirdn2d(x, taps[None, :], upx, 1, downx, 1, px0, px1, 0, 0, flip_filter)
        return _upfirdn2d(x, taps[:, None], 1, upy, 1, downy, 0, 0, py0, py1, flip_filter)
    return _upfirdn2d(x, f * gain, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter)


def _upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter):
    channels = x.shape[1]
    kh, kw = f.shape
    f = f.to(x.dtype)
    weight = f[None, None].expand(channels, 1, kh, kw)
    # Upsampling as a strided transposed convolution: output pixel j gets sum_i x[i] * f[j + q - i * up], which is
    # zero insertion followed by the padded convolution when q = k - 1 - pad_before (output_padding fills the end).
    extra_x, extra_y = px1 - px0 + upx - 1, py1 - py0 + upy - 1
    if ((upx > 1 or upy > 1) and downx == downy == 1 and 0 <= px0 <= kw - 1 and 0 <= py0 <= kh - 1
            and 0 <= extra_x < upx and 0 <= extra_y < upy):
        weight = weight.flip([2, 3]) if flip_filter else weight
        return F.conv_transpose2d(x, weight, stride=(upy, upx), padding=(kh - 1 - py0, kw - 1 - px0),
                                  output_padding=(extra_y, extra_x), groups=channels)
    if upx > 1 or upy > 1:
        n, c, h, w = x.shape
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n, c, h * upy, w * upx)
    weight = weight if flip_filter else weight.flip([2, 3])
    conv_pad = 0
    if px0 == px1 >= 0 and py0 == py1 >= 0:
        conv_pad = (py0, px0)
    else:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    return F.conv2d(x, weight, stride=(downy, downx), padding=conv_pad, groups=channels)


def filter2d(x, f, padding=0, flip_filter=False, gain=1):
    """Filter with `f`, padded so the output keeps the input size (plus `padding`)."""
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1):
    """Upsample by `up` with FIR filter `f` (output size a multiple of the input, plus `padding`)."""
    upx, upy = _pair(up)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1):
    """Downsample by `down` with FIR filter `f` (output size a fraction of the input, plus `padding`)."""
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2,
           py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """2-D convolution with optional FIR up/downsampling; padding applies once, to the upsampled image."""
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2

    def conv(x, w, transpose=False, stride=1, padding=0):
        if kw == kh == 1 and groups == 1 and not transpose and stride == 1 and padding in (0, (0, 0)):
            # a 1x1 convolution is a product over channels (torch's conv2d takes a slow path for it)
            return torch.matmul(x.permute(0, 2, 3, 1), w.flatten(1).t()).permute(0, 3, 1, 2)
        # F.conv2d correlates; a transposed convolution convolves, so it needs the opposite flip.
        if flip_weight == transpose and (kw > 1 or kh > 1):
            w = w.flip([2, 3])
        return (F.conv_transpose2d if transpose else F.conv2d)(x, w, groups=groups, stride=stride, padding=padding)

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return conv(x, w)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        return upfirdn2d(conv(x, w), f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return conv(x, w, stride=down)
    if up > 1:
        # Transposed strided convolution, then the FIR filter (official fast path).
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = conv(x, w, transpose=True, stride=up, padding=(pyt, pxt))
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter)
        return upfirdn2d(x, f, down=down, flip_filter=flip_filter) if down > 1 else x
    if px0 == px1 >= 0 and py0 == py1 >= 0:
        return conv(x, w, padding=(py0, px0))
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return conv(x, w)


def is_channels_last(x):
    """True if the (N, C, H, W) tensor `x` is stored channels-last (and not also plain contiguous)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale `x` to unit mean square along `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def add_noise(x, noise):
    """x + noise, in place into the temporary `x` when autograd does not track it."""
    if noise is None:
        return x
    return x + noise if x.requires_grad else x.add_(noise)


def modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None, demodulate=True,
                     flip_weight=True, fused_modconv=True):
    """StyleGAN2 modulated convolution: per-sample weights scaled by `styles`, optionally demodulated.

    Fused: one grouped convolution over the batch. Not fused: scale the activations before and after a shared
    convolution (faster for large batches). Both give the same result up to rounding.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    w = dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    resample = dict(f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
    if not fused_modconv:
        x = conv2d_resample(x * styles.reshape(batch, -1, 1, 1), weight, **resample)
        if demodulate and noise is not None:
            return torch.addcmul(noise, x, dcoefs.reshape(batch, -1, 1, 1))
        if demodulate:
            return x * dcoefs.reshape(batch, -1, 1, 1)
        return add_noise(x, noise)
    if demodulate:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    if batch > 1:  # the batch becomes groups of one convolution, in the memory format x came in
        memory_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        x = x.reshape(1, -1, *x.shape[2:]).contiguous(memory_format=memory_format)
    x = conv2d_resample(x, w.reshape(-1, in_channels, kh, kw), groups=batch, **resample)
    if batch > 1:
        x = x.reshape(batch, -1, *x.shape[2:])
    return add_noise(x, noise)


# ---------------------------------------------------------------------------------------------------------------
# Layers.


class FullyConnectedLayer(torch.nn.Module):
    """Linear layer with equalised learning rate (`lr_multiplier` scales the effective learning rate)."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        activation_gain(activation)  # validates the name
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight * self.weight_gain
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    """Convolution with equalised learning rate, optional FIR up/downsampling, bias, activation and clamp."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = activation_gain(activation)
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def forward(self, x, gain=1):
        x = conv2d_resample(x, self.weight * self.weight_gain, f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=self.up == 1)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp, inplace=True)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


class MappingNetwork(torch.nn.Module):
    """z (and camera label c, embedded and normalised) -> w, broadcast to `num_ws` copies; tracks `w_avg`."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.998):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        x = None
        if self.z_dim > 0:
            check_shape(z, [None, self.z_dim], "z")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            check_shape(c, [None, self.c_dim], "c (camera label)")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = y if x is None else torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise EG3DError("truncation needs w_avg, which this mapping network does not track")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self):
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling) + per-pixel noise + bias + activation."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", fused_modconv=True, gain=1):
        if noise_mode not in ("random", "const", "none"):
            raise EG3DError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=self.up == 1,
                             fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp, inplace=True)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution without demodulation, to `out_channels` image channels."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fused_modconv=True):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias, clamp=self.conv_clamp, inplace=True)

    def extra_repr(self):
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (2x up) conv0, conv1, and a ToRGB added to the running image."""

    upsample = True  # SynthesisBlockNoUp keeps its input resolution

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture="skip",
                 resample_filter=(1, 3, 3, 1), conv_clamp=256, use_fp16=False, fp16_channels_last=False,
                 fused_modconv_default=True, **layer_kwargs):
        if architecture not in ("orig", "skip", "resnet"):
            raise EG3DError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16  # accepted for compatibility; the port computes in float32
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        up = 2 if self.upsample else 1
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=up,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=up,
                                    resample_filter=resample_filter)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, update_emas=False, **layer_kwargs):
        w_iter = iter(ws.unbind(dim=1))
        if x is not None:
            x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout on CPUs
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=math.sqrt(0.5), **layer_kwargs)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        if img is not None and self.upsample:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            img = y if img is None else img + y  # official adds in place (see docs/teacher_port.md)
        return x, img

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}"


class SynthesisBlockNoUp(SynthesisBlock):
    """A synthesis block that keeps the resolution of its input (first block of the 2X/4X upsamplers)."""

    upsample = False


class SynthesisNetwork(torch.nn.Module):
    """StyleGAN2 synthesis: a constant 4x4 input, then one block per resolution up to `img_resolution`."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=4,
                 **block_kwargs):
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise EG3DError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=res >= fp16_resolution,
                                   **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws, **block_kwargs):
        check_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **block_kwargs)
            w_idx += block.num_conv
        return img

    def extra_repr(self):
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}")


class Generator(torch.nn.Module):
    """StyleGAN2 generator (mapping + synthesis): EG3D's tri-plane backbone."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None, **synthesis_kwargs):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
