"""The demo teacher's latent code: z decodes to valid, varied heads, exactly as EG3D's mapping sees z."""

import numpy as np
import torch

from training.synthetic.head_model import HeadParams, sample_params
from training.synthetic.latent import LATENT_SIZE, normalize_latent, params_from_z


def test_decoding_is_deterministic_and_scale_invariant():
    z = np.random.default_rng(0).standard_normal((50, LATENT_SIZE))
    p = params_from_z(z)
    assert p.shape == (50, HeadParams.SIZE) and p.dtype == np.float32
    np.testing.assert_array_equal(p, params_from_z(z.copy()))
    # EG3D's mapping normalises z first, so z and 3 z are the same head for the generator; also for the world
    np.testing.assert_allclose(params_from_z(3 * z), p, atol=1e-5)
    np.testing.assert_allclose(params_from_z(z[7]), p[7])


def test_normalisation_matches_the_mapping_network():
    z = torch.randn(4, LATENT_SIZE)
    expected = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    np.testing.assert_allclose(normalize_latent(z.numpy()), expected.numpy(), rtol=1e-5)


def test_parameters_cover_the_same_ranges_as_the_world_sampler():
    p = params_from_z(np.random.default_rng(1).standard_normal((4000, LATENT_SIZE)))
    q = sample_params(np.random.default_rng(1), 4000)
    lo, hi = q.min(0), q.max(0)
    span = np.maximum(hi - lo, 1e-6)
    p_lo, p_hi = np.percentile(p, [0.5, 99.5], axis=0)  # normal-distributed entries (light azimuth) have no bounds
    assert ((p_lo >= lo - 0.05 * span) & (p_hi <= hi + 0.05 * span)).all()
    for name, share in (("smile_l", 0.5), ("jaw_open", 0.35), ("blink_l", 0.05)):
        on = (p[:, HeadParams.index(name)] > 0).mean()
        assert abs(on - share) < 0.05, (name, on)
    # every parameter varies, and identity coordinates are independent of each other
    assert (p.std(0) > 0.02).all()
    corr = np.corrcoef(p[:, HeadParams.identity].T)
    assert np.abs(corr - np.eye(len(corr))).max() < 0.1
