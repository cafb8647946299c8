"""Local gradient statistics of an image: strength and coherence per pixel (StructKPN paper, Eqs. 2-3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_STRENGTH_SCALE", "STRENGTH_CALIBRATION_WINDOW_HU", "gradient_statistics"]

STRENGTH_CALIBRATION_WINDOW_HU = (-1024.0, 3072.0)
"""The HU window mapped to [0, 1] on which :data:`DEFAULT_STRENGTH_SCALE` was calibrated (``train.json``'s
``hu_window`` must be it unless the scale is recalibrated; ``tests/test_config_agreement.py``)."""

DEFAULT_STRENGTH_SCALE = 2.0
"""Strength scale calibrated on real chest CT windowed from HU [-1024, 3072] to [0, 1], with 11 x 11 patches and the
paper's ``sigma_l2 = 1.8, sigma_l1 = 0.35`` (``docs/loss_components.md``). It is the largest scale, in steps of 0.25,
that keeps the body outline at least 85 % L2-dominated in each calibration series (88 % and 91 %; 89 % pooled). At this
scale lung vessels are 78 % SSIM-dominated, flat soft tissue 89 % L1 and lung parenchyma 84 % L1. A different
window or patch size needs a new scale: the strength ``s1`` grows linearly with the image contrast and with the patch
side.
"""


def gradient_statistics(
    image: torch.Tensor, patch_size: int = 11, strength_scale: float = DEFAULT_STRENGTH_SCALE, eps: float = 1e-12
) -> torch.Tensor:
    """
    Strength and coherence of the gradients in the ``patch_size`` x ``patch_size`` patch around every pixel.

    For the patch around pixel (m, n), ``G`` is the (kr * kr, 2) matrix of its pixel gradients (central differences
    inside the image, one-sided at the image border, as ``numpy.gradient``; the patch is reflected at the border,
    as ``numpy.pad(mode="reflect")``). The paper (Eqs. 2-3) calls ``l1 >= l2`` the "eigenvalues" of ``G``,
    "computed using SVD": they are its singular values ``s1 >= s2``, and this function follows that text:

    - strength (Eq. 2) ``= strength_scale * s1``. It is linear in the image contrast: about ``kr`` times the RMS
      gradient along the dominant direction, in intensity units per pixel.
    - coherence (Eq. 3) ``= (sqrt(s1) - sqrt(s2)) / (sqrt(s1) + sqrt(s2))`` in [0, 1]: 1 on a straight edge, ramp or
      stripes, low on isotropic texture (median about 0.03 for white noise), and 0 on a constant patch (``eps`` is
      added to the denominator).

    The authors' released code instead puts the square roots of the eigenvalues of ``G^T G``, i.e. ``s1`` and
    ``s2``, into Eq. 3: ``(s1 - s2) / (s1 + s2)``. The strength is the same in both readings. The paper's coherence is
    lower everywhere except at 0 and 1 (0.25 with the code's definition becomes 0.13). We follow the paper because on
    real chest CT only its coherence gives the regimes of the paper's Fig. 2(e): with the code's definition the
    directional noise and texture of flat regions reaches coherence 0.25-0.35, above ``sigma_l1 / sigma_l2 = 0.19``,
    so flat soft tissue and lung parenchyma were only 59 % and 49 % L1; with the paper's they are 89 % and 84 % L1,
    while the body outline stays 89 % L2 and lung vessels become 78 % SSIM (``docs/loss_components.md``).

    Computation, in closed form for every pixel at once: ``G^T G`` is the box SUM over the patch of
    ``[[gx^2, gx gy], [gx gy, gy^2]]``; its eigenvalues ``e1 >= e2`` come from the trace and discriminant of the
    symmetric 2 x 2 matrix, with ``e2 = det / e1`` (no cancellation when ``e2 << e1``); ``s1 = sqrt(e1)``,
    ``sqrt(s1) = e1 ** (1 / 4)``, and likewise for ``s2``. The fourth root magnifies rounding: a relative error
    ``d`` of ``e2 / e1`` costs about ``2 * d ** (1 / 4)`` of coherence, 0.05 on a straight oblique edge in float32.
    So the statistics are computed in float64 and returned in the image's dtype.

    Args:
        image: (B, 1, H, W) images, e.g. CT windowed to [0, 1]. H and W must exceed ``patch_size // 2``.
        patch_size: side ``kr`` of the odd square patch, in pixels.
        strength_scale: factor applied to the largest singular value ``s1``; it absorbs the intensity scale of
            ``image`` and the use of a box sum rather than a mean.
        eps: added to the coherence denominator (in units of ``sqrt(s1)``) so that flat patches give 0.

    Returns:
        (B, 2, H, W) tensor of the image's dtype: channel 0 strength, channel 1 coherence.

    Example::

        ramp = torch.linspace(0, 1, 32).repeat(1, 1, 32, 1)  # (1, 1, 32, 32), grows along the columns
        stats = gradient_statistics(ramp)  # coherence is 1 everywhere
    """
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"image must have shape (B, 1, H, W), got {tuple(image.shape)}.")
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd integer, got {patch_size}.")
    work = image.to(torch.float64)
    grad_y, grad_x = torch.gradient(work, dim=(2, 3))
    products = torch.cat([grad_x * grad_x, grad_x * grad_y, grad_y * grad_y], dim=1)
    radius = patch_size // 2
    products = F.pad(products, (radius, radius, radius, radius), mode="reflect")
    gxx, gxy, gyy = F.avg_pool2d(products, patch_size, stride=1, divisor_override=1).unbind(dim=1)

    # eigenvalues e1 >= e2 of G^T G = squared singular values of G
    half_trace = (gxx + gyy) / 2
    discriminant = torch.sqrt(((gxx - gyy) / 2) ** 2 + gxy**2)
    eigenvalue1 = half_trace + discriminant
    # e2 = det / e1 avoids the cancellation of (half_trace - discriminant) when e2 << e1 (straight edges)
    determinant = (gxx * gyy - gxy**2).clamp_min(0)
    eigenvalue2 = determinant / eigenvalue1.clamp_min(torch.finfo(work.dtype).tiny)
    singular1, singular2 = torch.sqrt(eigenvalue1), torch.sqrt(eigenvalue2)
    root1, root2 = torch.sqrt(singular1), torch.sqrt(singular2)

    strength = strength_scale * singular1
    coherence = (root1 - root2) / (root1 + root2 + eps)
    return torch.stack([strength, coherence], dim=1).to(image.dtype)
