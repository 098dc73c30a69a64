"""Image similarity losses for [N, 1, K, J, I] images in [0, 1]; lower is better.

Every loss takes an optional ``mask`` (same shape, 0/1) of the voxels that
count: registration passes the fixed voxels whose mapped point lies inside the
moving image's field of view, so padding never pulls on the field.

* :func:`local_ncc` -- negative local normalised cross-correlation (boxes of
  ``2 * radius + 1`` voxels, separable box sums).
* :func:`mind_ssc` features and :func:`mind_loss` -- MIND self-similarity
  context descriptors (Heinrich et al. 2013) compared by mean squared error.
* :func:`mutual_information` -- negative Parzen-window mutual information.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a (2r+1)^3 box around every voxel (zero padding), separably: O(r) per voxel.

    Differentiable; the gradient is the box sum of the incoming gradient (see :class:`_BoxSum`).
    """
    return _BoxSum.apply(x, radius)


class _BoxSum(torch.autograd.Function):
    """The box sum with zero padding is its own adjoint (a symmetric window), so its backward pass is one
    more box sum instead of autograd's replay of every slice addition."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, radius: int) -> torch.Tensor:
        ctx.radius = radius
        return _box_sum(x, radius)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _box_sum(grad, ctx.radius), None


def _box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Along each axis: the voxel plus its ``radius`` neighbours on either side (none past the ends), added
    slice by slice into one buffer: 2r vectorised passes per axis, 3x faster than running sums for the
    radii used here (at most 3)."""
    for dim in (2, 3, 4):
        n = x.shape[dim]
        reach = min(radius, n - 1)
        if reach == 0:
            continue
        out = x.clone()
        for shift in range(1, reach + 1):
            out.narrow(dim, shift, n - shift).add_(x.narrow(dim, 0, n - shift))
            out.narrow(dim, 0, n - shift).add_(x.narrow(dim, shift, n - shift))
        x = out
    return x


def _masked_mean(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return value.mean()
    return (value * mask).sum() / mask.sum().clamp_min(1.0)


def local_statistics(image: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Local mean and variance in (2r+1)^3 boxes; precompute them for the fixed image."""
    n = float((2 * radius + 1) ** 3)
    mean, square = (box_sum(torch.cat([image, image * image], dim=1), radius) / n).split(1, dim=1)
    return mean, (square - mean * mean).clamp_min(0)


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None, radius: int = 2,
              fixed_statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
              min_variance: float = 6.25e-8) -> torch.Tensor:
    """Negative mean local NCC in [-1, 0] (squared correlation, as in VoxelMorph).

    ``fixed_statistics`` = :func:`local_statistics` (fixed, radius) saves recomputing them every iteration.
    Variances are floored at ``min_variance`` (0.5 HU std on the [0, 1] scale) instead of adding
    an epsilon: an added epsilon rewards raising the warped image's local contrast wherever the
    product of variances is small, which pulls smooth regions of identical images apart.
    Differentiable with respect to ``warped`` and ``fixed`` (:class:`_LocalNCC`).
    """
    mean_f, var_f = fixed_statistics or local_statistics(fixed, radius)
    weight = torch.full_like(warped, 1.0 / warped.numel()) if mask is None else mask / mask.sum().clamp_min(1.0)
    return -_LocalNCC.apply(warped, fixed, mean_f, var_f.clamp_min(min_variance), weight, radius, min_variance)


class _LocalNCC(torch.autograd.Function):
    """The ``weight``-ed sum of the local squared correlation clamped at 1, and its gradient with respect to
    the warped image in one pass: one autograd node instead of some twenty, and the backward pass is one box
    sum of three per-window coefficients (the windows' sums are linear in w, w^2 and f w)."""

    @staticmethod
    def forward(ctx, warped, fixed, mean_f, var_f, weight, radius, min_variance):
        n = float((2 * radius + 1) ** 3)
        sums = _box_sum(torch.cat([warped, warped * warped, fixed * warped], 1), radius).mul_(1.0 / n)
        mean_w, square_w, product = sums.split(1, dim=1)
        cross = torch.addcmul(product, mean_f, mean_w, value=-1.0)
        var_w = torch.addcmul(square_w, mean_w, mean_w, value=-1.0)
        seen_var = var_w >= min_variance  # where the floor does not hold var_w
        var_w = var_w.clamp_min_(min_variance)
        ncc = cross * cross / (var_f * var_w)
        ctx.save_for_backward(warped, fixed, mean_f, var_f, weight, mean_w, cross, var_w, seen_var, ncc)
        ctx.radius = radius
        return (ncc.clamp_max(1.0) * weight).sum()

    @staticmethod
    def backward(ctx, grad):
        warped, fixed, mean_f, var_f, weight, mean_w, cross, var_w, seen_var, ncc = ctx.saved_tensors
        n = float((2 * ctx.radius + 1) ** 3)
        d_ncc = (grad * weight).masked_fill_(ncc > 1.0, 0.0)
        d_cross = d_ncc * 2.0 * cross / (var_f * var_w)  # ncc = cross^2 / (var_f var_w)
        d_var = (d_ncc * ncc / var_w).neg_().masked_fill_(~seen_var, 0.0)
        # cross = P - mean_f mean_w, var_w = Q - mean_w^2, with P, Q, mean_w the window means of f w, w^2, w
        d_mean = torch.addcmul(d_cross * mean_f, d_var, mean_w, value=2.0).neg_()
        spread = _box_sum(torch.cat([d_mean, d_var, d_cross], 1), ctx.radius).mul_(1.0 / n)
        d_w, d_square, d_product = spread.split(1, dim=1)
        wants = ctx.needs_input_grad  # the fixed side too, for losses that move both images
        return (d_w + 2.0 * warped * d_square + fixed * d_product if wants[0] else None,
                warped * d_product if wants[1] else None,
                -d_cross * mean_w if wants[2] else None,
                -d_ncc * ncc / var_f if wants[3] else None, None, None, None)


# Six-neighbourhood pairs of MIND-SSC: the 12 edges between the six face neighbours
# that are sqrt(2) apart (Heinrich et al., MICCAI 2013).
_SIX = torch.tensor([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 2], [2, 1, 1], [1, 2, 1]])


def _ssc_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    first, second = [], []
    for a in range(6):
        for b in range(a + 1, 6):
            if int(((_SIX[a] - _SIX[b]) ** 2).sum()) == 2:
                first.append(_SIX[a])
                second.append(_SIX[b])
    return torch.stack(first), torch.stack(second)


MIND_RADIUS, MIND_DILATION = 1, 2
MIND_REACH = MIND_RADIUS + MIND_DILATION  # voxels a descriptor depends on around its centre


def mind_ssc(image: torch.Tensor, radius: int = MIND_RADIUS, dilation: int = MIND_DILATION) -> torch.Tensor:
    """MIND-SSC descriptor [N, 12, K, J, I] of a [N, 1, K, J, I] image."""
    first, second = _ssc_pairs()
    d = dilation
    padded = F.pad(image, [d] * 6, mode="replicate")
    k, j, i = image.shape[2:]

    def shifted(offsets: torch.Tensor) -> torch.Tensor:
        return torch.cat([padded[:, :, o[0] * d:o[0] * d + k, o[1] * d:o[1] * d + j, o[2] * d:o[2] * d + i]
                          for o in offsets.tolist()], dim=1)

    distance = box_sum((shifted(first) - shifted(second)) ** 2, radius) / (2 * radius + 1) ** 3
    distance = distance - distance.min(dim=1, keepdim=True).values
    variance = distance.mean(dim=1, keepdim=True)
    variance = variance.clamp(variance.mean() * 1e-3, variance.mean() * 1e3)
    return torch.exp(-distance / variance)


def mind_loss(fixed_features: torch.Tensor, warped_features: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of MIND descriptors (compare features, not images)."""
    return _masked_mean(((fixed_features - warped_features) ** 2).mean(dim=1, keepdim=True), mask)


def mutual_information(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None,
                       bins: int = 32, sigma: float | None = None, max_samples: int | None = 200_000,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Negative mutual information (nats) from a Gaussian Parzen-window joint histogram of [0, 1] images.

    ``max_samples`` voxels (drawn with ``generator``) estimate the histogram; None uses them all.
    """
    f = fixed.reshape(-1)
    w = warped.reshape(-1)
    weight = torch.ones_like(f) if mask is None else mask.reshape(-1).to(f.dtype)
    if max_samples is not None and f.numel() > max_samples:
        pick = torch.randint(0, f.numel(), (max_samples,), generator=generator, device=f.device)
        f, w, weight = f[pick], w[pick], weight[pick]
    centres = torch.linspace(0, 1, bins, device=f.device, dtype=f.dtype)
    sigma = sigma if sigma is not None else 0.5 / (bins - 1)
    pf = torch.exp(-0.5 * ((f[:, None].clamp(0, 1) - centres) / sigma) ** 2)
    pw = torch.exp(-0.5 * ((w[:, None].clamp(0, 1) - centres) / sigma) ** 2)
    pf = pf / pf.sum(1, keepdim=True) * weight[:, None]
    pw = pw / pw.sum(1, keepdim=True)
    joint = pf.T @ pw
    joint = joint / joint.sum().clamp_min(1e-12)
    marginal_f = joint.sum(1, keepdim=True)
    marginal_w = joint.sum(0, keepdim=True)
    mi = (joint * (torch.log(joint + 1e-10) - torch.log(marginal_f @ marginal_w + 1e-10))).sum()
    return -mi
