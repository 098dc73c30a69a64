"""Similarity losses against brute force: box sums, local NCC, mutual information and MIND-SSC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from TotalRegistratorLib.optimization import similarity
from TotalRegistratorLib.optimization.similarity import (
    box_sum,
    local_ncc,
    local_statistics,
    mind_loss,
    mind_ssc,
    mutual_information,
)


def smooth_noise(shape, seed: int, sigma_vox: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """Smooth random texture in [0, 1], [1, 1, *shape]."""
    from scipy import ndimage

    values = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma_vox)
    values = (values - values.min()) / np.ptp(values)
    return torch.as_tensor(values, dtype=dtype)[None, None]


def brute_box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    size = 2 * radius + 1
    ones = torch.ones(1, 1, size, size, size, dtype=x.dtype)
    channels = x.shape[1]
    return F.conv3d(x, ones.expand(channels, 1, size, size, size), padding=radius, groups=channels)


def brute_ncc_map(f: torch.Tensor, w: torch.Tensor, radius: int, floor: float = 6.25e-8) -> torch.Tensor:
    """Squared local correlation from zero-padded box means, by convolution."""
    n = float((2 * radius + 1) ** 3)
    mf, mw = brute_box_sum(f, radius) / n, brute_box_sum(w, radius) / n
    cov = brute_box_sum(f * w, radius) / n - mf * mw
    vf = brute_box_sum(f * f, radius) / n - mf * mf
    vw = brute_box_sum(w * w, radius) / n - mw * mw
    return (cov * cov / (vf.clamp_min(floor) * vw.clamp_min(floor))).clamp_max(1.0)


# --- box sums and local statistics -------------------------------------------------------------


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_box_sum_equals_zero_padded_convolution(radius):
    x = torch.randn(2, 3, 7, 9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(radius))
    got = box_sum(x, radius)
    assert got.shape == x.shape
    torch.testing.assert_close(got, brute_box_sum(x, radius), rtol=0, atol=1e-10)
    thin = torch.randn(2, 3, 1, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(box_sum(thin, radius + 3), brute_box_sum(thin, radius + 3), rtol=0, atol=1e-10)


def test_box_sum_counts_the_voxels_inside_the_volume():
    """On ones, the box sum is the number of box voxels inside the volume (zero padding)."""
    ones = torch.ones(1, 1, 5, 6, 7, dtype=torch.float64)
    got = box_sum(ones, 2)
    assert got[0, 0, 2, 2, 3] == 125.0  # whole box inside
    assert got[0, 0, 0, 0, 0] == 27.0  # corner: 3 x 3 x 3 inside
    assert got[0, 0, 0, 3, 3] == 3 * 5 * 5


def test_local_statistics_match_brute_force():
    x = smooth_noise((8, 9, 10), seed=1, sigma_vox=0.7)
    mean, var = local_statistics(x, 2)
    n = 125.0
    bmean = brute_box_sum(x, 2) / n
    bvar = brute_box_sum(x * x, 2) / n - bmean**2
    torch.testing.assert_close(mean, bmean, rtol=0, atol=1e-12)
    torch.testing.assert_close(var, bvar.clamp_min(0), rtol=0, atol=1e-12)
    # interior voxel: the plain mean and (population) variance of its 5 x 5 x 5 box
    box = x[0, 0, 1:6, 2:7, 3:8]
    assert float(mean[0, 0, 3, 4, 5]) == pytest.approx(float(box.mean()), abs=1e-12)
    assert float(var[0, 0, 3, 4, 5]) == pytest.approx(float(box.var(unbiased=False)), abs=1e-12)


# --- local NCC ---------------------------------------------------------------------------------


def test_local_ncc_of_an_image_with_itself_is_minus_one():
    x = smooth_noise((10, 12, 11), seed=2, sigma_vox=0.8)
    assert float(local_ncc(x, x)) == pytest.approx(-1.0, abs=1e-6)
    assert float(local_ncc(x, x, radius=1)) == pytest.approx(-1.0, abs=1e-6)


def ncc_by_autograd(fixed, warped, mask, radius, min_variance=6.25e-8):
    """The local NCC loss written out in differentiable torch operations (the reference for its gradient)."""
    n = float((2 * radius + 1) ** 3)
    mean_f, var_f = local_statistics(fixed, radius)
    mean_w = brute_box_sum(warped, radius) / n
    var_w = brute_box_sum(warped * warped, radius) / n - mean_w * mean_w
    cross = brute_box_sum(fixed * warped, radius) / n - mean_f * mean_w
    ncc = cross * cross / (var_f.clamp_min(min_variance) * var_w.clamp_min(min_variance))
    return -(ncc.clamp_max(1.0) * mask).sum() / mask.sum()


@pytest.mark.parametrize("radius", [1, 2])
def test_local_ncc_value_and_gradient_equal_autograd_through_its_formula(radius):
    """Including flat patches (the variance floor holds, no gradient through it), a correlation clamped at 1
    and a mask."""
    fixed = smooth_noise((9, 10, 11), seed=5, sigma_vox=0.8)
    warped = (0.7 * fixed + 0.3 * smooth_noise((9, 10, 11), seed=6, sigma_vox=0.8)).clone()
    warped[..., :5, :5, :5] = 0.25  # flat: var_w below the floor
    fixed[..., 4:, 5:, 6:] = 0.5 + 1e-5 * fixed[..., 4:, 5:, 6:]  # nearly flat: var_f floored
    mean_f, var_f = local_statistics(fixed, radius)
    mean_w, var_w = local_statistics(warped, radius)
    assert (var_w < 6.25e-8).any() and (var_f < 6.25e-8).any(), "the floors should be reached"
    mask = (torch.rand(fixed.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64) > 0.3).double()
    for statistics in (None, (mean_f, var_f)):
        ours = [x.clone().requires_grad_(True) for x in (fixed, warped)]
        reference = [x.clone().requires_grad_(True) for x in (fixed, warped)]
        value = local_ncc(*ours, mask, radius, statistics and local_statistics(ours[0], radius))
        expected = ncc_by_autograd(*reference, mask, radius)
        value.backward()
        expected.backward()
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)
        for got, want in zip(ours, reference):  # the warped image's gradient, and the fixed image's
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-7, atol=1e-12)


def test_local_ncc_of_independent_noise_is_near_zero():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 1, 16, 16, 16, generator=g, dtype=torch.float64)
    b = torch.rand(1, 1, 16, 16, 16, generator=g, dtype=torch.float64)
    interior = torch.zeros_like(a)
    interior[..., 2:-2, 2:-2, 2:-2] = 1.0
    # squared correlation of 125 independent samples has mean about 1/124
    assert -0.03 < float(local_ncc(a, b, interior, radius=2)) < 0.0
    assert -0.03 < float(local_ncc(a - 0.5, b - 0.5, radius=2)) < 0.0
    # (boxes reaching over the border see the zero padding in both images, which correlates
    # non-zero-mean images there: without the mask the value is about -0.15 on this 16^3 volume)


def test_local_ncc_matches_brute_force_with_and_without_mask():
    f = smooth_noise((9, 10, 11), seed=4, sigma_vox=0.8)
    w = 0.6 * f + 0.4 * smooth_noise((9, 10, 11), seed=5, sigma_vox=0.8)
    ncc = brute_ncc_map(f, w, 2)
    assert float(local_ncc(f, w)) == pytest.approx(-float(ncc.mean()), abs=1e-10)
    mask = torch.zeros_like(f)
    mask[..., 2:7, 1:5, 3:10] = 1.0
    expected = -float((ncc * mask).sum() / mask.sum())
    assert float(local_ncc(f, w, mask)) == pytest.approx(expected, abs=1e-10)
    assert float(local_ncc(f, w, mask)) != pytest.approx(float(local_ncc(f, w)), abs=1e-4)
    # precomputed fixed statistics give the same value
    stats = local_statistics(f, 2)
    assert float(local_ncc(f, w, mask, fixed_statistics=stats)) == pytest.approx(expected, abs=1e-12)


def test_local_ncc_ignores_warped_values_outside_the_mask():
    f = smooth_noise((12, 12, 12), seed=6, sigma_vox=0.8)
    w = f.clone()
    w[..., 7:, :, :] = torch.rand(1, 1, 5, 12, 12, generator=torch.Generator().manual_seed(7), dtype=w.dtype)
    mask = torch.zeros_like(f)
    mask[..., :5, :, :] = 1.0  # boxes of radius 2 around slices 0..4 only reach slice 6
    assert float(local_ncc(f, w, mask)) == pytest.approx(-1.0, abs=1e-6)
    assert float(local_ncc(f, w)) > -0.8  # the corrupted part counts without the mask


def test_local_ncc_is_invariant_to_a_linear_intensity_change_of_warped():
    f = smooth_noise((10, 11, 12), seed=8, sigma_vox=0.8)
    w = 0.5 * f + 0.5 * smooth_noise((10, 11, 12), seed=9, sigma_vox=0.8)
    base = float(local_ncc(f, w))
    assert -0.95 < base < -0.2, "test images should be partially correlated"
    # a scale (and a sign flip, since the correlation is squared) changes nothing anywhere
    assert float(local_ncc(f, 0.3 * w)) == pytest.approx(base, abs=1e-9)
    assert float(local_ncc(f, -2.0 * w)) == pytest.approx(base, abs=1e-9)
    # an offset too, wherever the box lies inside the volume (zero padding breaks it at the border)
    interior = torch.zeros_like(f)
    interior[..., 2:-2, 2:-2, 2:-2] = 1.0
    inside = float(local_ncc(f, w, interior))
    assert float(local_ncc(f, 0.3 * w + 0.4, interior)) == pytest.approx(inside, abs=1e-9)
    assert float(local_ncc(f, 1.0 - w, interior)) == pytest.approx(inside, abs=1e-9)


def test_local_ncc_floors_the_variance_of_flat_regions():
    """A flat warped image has no correlation with anything (no division by zero, no NaN)."""
    f = smooth_noise((8, 8, 8), seed=10)
    flat = torch.full_like(f, 0.5)
    value = local_ncc(f, flat)
    assert torch.isfinite(value)
    # interior boxes of a constant image have zero covariance; only the zero-padded border correlates
    interior = torch.zeros_like(f)
    interior[..., 2:-2, 2:-2, 2:-2] = 1.0
    assert float(local_ncc(f, flat, interior)) == pytest.approx(0.0, abs=1e-9)


def test_local_ncc_gradcheck():
    g = torch.Generator().manual_seed(11)
    f = torch.rand(1, 1, 4, 5, 4, generator=g, dtype=torch.float64)
    w = (0.5 * f + 0.5 * torch.rand(1, 1, 4, 5, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    mask = (torch.rand(1, 1, 4, 5, 4, generator=g, dtype=torch.float64) > 0.3).double()
    assert torch.autograd.gradcheck(lambda x: local_ncc(f, x, mask, radius=1), (w,), eps=1e-6, atol=1e-7)
    # gradient with respect to the fixed image as well
    f2 = f.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: local_ncc(x, w.detach(), None, radius=1), (f2,), eps=1e-6, atol=1e-7)


# --- mutual information --------------------------------------------------------------------------


def test_mutual_information_prefers_aligned_images():
    x = smooth_noise((16, 16, 16), seed=12, sigma_vox=1.2, dtype=torch.float32)
    same = float(mutual_information(x, x))
    shifted = float(mutual_information(x, torch.roll(x, shifts=3, dims=4)))
    perm = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))
    shuffled = float(mutual_information(x, x.reshape(-1)[perm].reshape(x.shape)))
    assert same < shifted < shuffled <= 0.0
    assert same < -1.0  # about the entropy of the image's histogram (nats)
    assert shuffled > -0.15  # independent: only the finite-sample bias remains


def test_mutual_information_is_symmetric_and_invariant_to_invertible_remapping():
    x = smooth_noise((16, 16, 16), seed=13, sigma_vox=1.2)
    y = torch.roll(x, shifts=2, dims=3)
    base = float(mutual_information(x, y))
    assert float(mutual_information(y, x)) == pytest.approx(base, abs=1e-9)
    # reversing the intensities mirrors the (symmetric) bin centres: exactly invariant
    assert float(mutual_information(x, 1.0 - y)) == pytest.approx(base, abs=1e-9)
    # a smooth monotone remapping moves values between bins: about invariant
    remapped = float(mutual_information(x, y**1.5))
    assert remapped == pytest.approx(base, rel=0.1)
    # and stays far from the value of independent images (about 0)
    assert remapped < 0.5 * base


def test_mutual_information_respects_the_mask_and_sampling():
    x = smooth_noise((16, 16, 16), seed=14, sigma_vox=1.2)
    y = x.clone()
    y[..., 8:, :, :] = torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    mask = torch.zeros_like(x)
    mask[..., :8, :, :] = 1.0
    masked = float(mutual_information(x, y, mask))
    # with the mask, the value is that of the matching half alone
    assert masked == pytest.approx(float(mutual_information(x[..., :8, :, :], y[..., :8, :, :])), abs=1e-9)
    assert masked < float(mutual_information(x, y)) - 0.2
    # subsampling: reproducible with a generator, close to the full estimate
    a = mutual_information(x, y, max_samples=2000, generator=torch.Generator().manual_seed(5))
    b = mutual_information(x, y, max_samples=2000, generator=torch.Generator().manual_seed(5))
    assert float(a) == float(b)
    assert float(a) == pytest.approx(float(mutual_information(x, y, max_samples=None)), abs=0.15)


def test_mutual_information_gradients_flow():
    x = smooth_noise((10, 10, 10), seed=15, sigma_vox=1.0, dtype=torch.float32)
    w = torch.roll(x, shifts=1, dims=2).clone().requires_grad_(True)
    loss = mutual_information(x, w)
    loss.backward()
    assert torch.isfinite(w.grad).all()
    assert w.grad.abs().max() > 0
    # a small step against the gradient improves (lowers) the loss
    with torch.no_grad():
        stepped = w - 0.01 * w.grad / w.grad.abs().max()
    assert float(mutual_information(x, stepped)) < float(loss.detach())


# --- MIND-SSC --------------------------------------------------------------------------------------


def test_mind_ssc_uses_the_twelve_sqrt2_pairs_of_the_six_neighbourhood():
    first, second = similarity._ssc_pairs()
    assert first.shape == (12, 3) and second.shape == (12, 3)
    offsets_a, offsets_b = first - 1, second - 1
    # every offset is a face neighbour, each pair is sqrt(2) apart, and all 12 unordered pairs are distinct
    for o in torch.cat([offsets_a, offsets_b]):
        assert int(o.abs().sum()) == 1
    assert torch.all(((offsets_a - offsets_b) ** 2).sum(1) == 2)
    pairs = {frozenset([tuple(a.tolist()), tuple(b.tolist())]) for a, b in zip(offsets_a, offsets_b)}
    assert len(pairs) == 12


def brute_mind_distance(image: np.ndarray, voxel, radius: int, dilation: int) -> np.ndarray:
    first, second = similarity._ssc_pairs()
    k, j, i = voxel
    out = []
    for a, b in zip((first - 1).tolist(), (second - 1).tolist()):
        total = 0.0
        for dk in range(-radius, radius + 1):
            for dj in range(-radius, radius + 1):
                for di in range(-radius, radius + 1):
                    pa = image[k + a[0] * dilation + dk, j + a[1] * dilation + dj, i + a[2] * dilation + di]
                    pb = image[k + b[0] * dilation + dk, j + b[1] * dilation + dj, i + b[2] * dilation + di]
                    total += (pa - pb) ** 2
        out.append(total / (2 * radius + 1) ** 3)
    return np.array(out)


def test_mind_ssc_matches_brute_force_up_to_the_global_variance():
    x = smooth_noise((11, 12, 13), seed=16, sigma_vox=0.8)
    features = mind_ssc(x)
    assert features.shape == (1, 12, 11, 12, 13)
    assert torch.all((features > 0) & (features <= 1.0))
    # every voxel's descriptor has its nearest pair at exp(0) = 1
    torch.testing.assert_close(features.amax(dim=1), torch.ones(1, 11, 12, 13, dtype=x.dtype))
    image = x[0, 0].numpy()
    for voxel in [(3, 3, 3), (5, 6, 7), (7, 8, 9)]:  # at least radius + dilation from every border
        d = brute_mind_distance(image, voxel, 1, 2)
        d = d - d.min()
        expected = np.exp(-d / d.mean())  # the clamp of the variance does not bind on texture like this
        np.testing.assert_allclose(features[0, :, voxel[0], voxel[1], voxel[2]].numpy(), expected, rtol=1e-9,
                                   atol=1e-12)


def test_mind_ssc_is_invariant_to_intensity_scale_and_offset():
    x = smooth_noise((9, 10, 11), seed=17, sigma_vox=0.8)
    features = mind_ssc(x)
    torch.testing.assert_close(mind_ssc(3.0 * x + 0.25), features, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mind_ssc(0.1 * x - 5.0), features, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(mind_ssc(x**2), features, atol=1e-3)


def test_mind_ssc_is_translation_equivariant_in_the_interior():
    x = smooth_noise((14, 14, 14), seed=18, sigma_vox=0.8)
    shifted = torch.roll(x, shifts=2, dims=4)
    a, b = mind_ssc(x), mind_ssc(shifted)
    # away from the borders and the wrap-around the descriptors move with the image: distances and
    # their per-voxel normalisation are local (the global clamp of the variance does not bind here)
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -6))
    inner_shifted = (slice(None), slice(4, -4), slice(4, -4), slice(6, -4))
    torch.testing.assert_close(a[0][inner], b[0][inner_shifted], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(a[0][inner], a[0][inner_shifted], atol=1e-3)


def test_mind_loss_is_zero_for_identical_inputs_and_positive_otherwise():
    x = smooth_noise((9, 10, 11), seed=19, sigma_vox=0.8)
    fx = mind_ssc(x)
    assert float(mind_loss(fx, fx)) == 0.0
    fy = mind_ssc(torch.roll(x, 2, dims=3))
    diff = float(mind_loss(fx, fy))
    assert diff > 1e-3
    manual = float(((fx - fy) ** 2).mean())
    assert diff == pytest.approx(manual, rel=1e-12)
    mask = torch.zeros(1, 1, 9, 10, 11, dtype=x.dtype)
    mask[..., :4, :, :] = 1.0
    manual_masked = float(((fx - fy) ** 2).mean(dim=1)[:, :4].mean())
    assert float(mind_loss(fx, fy, mask)) == pytest.approx(manual_masked, rel=1e-12)


def test_box_sum_gradient_is_the_box_sum_of_the_gradient():
    """The box sum's hand-written backward (its own adjoint) matches numerical differentiation."""
    x = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: similarity.box_sum(t, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: similarity.box_sum(t, 1), (x,))
