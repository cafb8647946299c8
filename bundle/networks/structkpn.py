"""StructKPN: a kernel prediction network that filters every CT pixel with its own predicted kernel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bundle.layers.local_conv import kernel_size_from_taps, local_conv2d_padded, pad_for_local_conv
from bundle.utils.slices import check_slices

__all__ = ["NEIGHBOUR_SHARE", "STRUCTKPN_PRESETS", "StructKPN", "dose_aware_state_dict", "multi_slice_state_dict"]

NEIGHBOUR_SHARE = 0.1
"""Weight the neighbour slices of a multi-slice StructKPN start with, all together, at initialisation (softmax
kernels, neighbour kernels as large as the centre's): see :func:`multi_slice_state_dict`."""


@torch.jit.unused
def _plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a ``torch.Tensor`` (a MetaTensor without its metadata), sharing memory."""
    return x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x

STRUCTKPN_PRESETS: dict[str, dict[str, int]] = {
    "lite": {"features": 32, "num_res_blocks": 8, "head_channels": 32, "block_groups": 1, "downsample": 2},
    "authors": {"features": 96, "num_res_blocks": 24, "head_channels": 441, "block_groups": 2, "downsample": 1},
}
"""Named settings of the kernel predictor (measured costs in ``docs/dev/network_costs.md``).

- ``"authors"``: Fig. 1 at full resolution, as in the authors' released configuration: 24 residual blocks of 96
  channels whose 3 x 3 convolutions have 2 groups (the "G2" of Fig. 1; the 441-channel head cannot be split in 2
  groups), then the head of 1 x 1 convolutions 96 -> 441 -> 441 (k = 21). 2.3 M parameters, 606 GMAC a 512 x 512
  slice.
- ``"lite"`` (default): the residual trunk runs at half resolution (stride-2 convolution in, sub-pixel
  convolution out, plus the full-resolution stem as a skip), and 32 channels enter the last 1 x 1 convolution.
  0.18 M parameters, 15 GMAC a 512 x 512 slice (k = 21), about 40 times cheaper.
"""


class _ResidualBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus the input (no normalisation), as in EDSR and the StructKPN code."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, groups=groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class StructKPN(nn.Module):
    """
    Kernel prediction network of StructKPN (Fig. 1): a CNN predicts one k x k kernel per pixel, the kernels are
    normalised, and the INPUT image is filtered with them by the local convolution of Eq. 1
    (:func:`bundle.layers.local_conv2d`, reflect padding).

    Kernel predictor: full-resolution stem ``conv3x3 -> ReLU``; a ``conv3x3`` (stride ``downsample``) into
    ``num_res_blocks`` residual blocks (``conv3x3 -> ReLU -> conv3x3`` + identity, no batch norm, ``block_groups``
    groups); when ``downsample > 1`` a sub-pixel convolution (1 x 1 conv + ``PixelShuffle``) back to full
    resolution, cropped to H x W and added to the stem features; then the head
    ``conv1x1(features -> head_channels) -> ReLU -> conv1x1(head_channels -> k * k)`` gives k * k logits a pixel.
    Any H, W works (both > k // 2, for the reflect padding).

    Kernel normalisation: ``"softmax"`` over the k * k taps (over all taps of all slices, multi-slice) makes every output pixel a convex combination of its
    neighbourhood, so a constant image is returned unchanged (mean HU kept on flat regions); ``"none"`` uses the
    raw logits as kernels (an unconstrained linear filter a pixel; no mean preservation).

    Initialisation: the last head convolution starts with zero weights and a bias of ``log(k * k - 1)`` on the
    centre tap, 0 elsewhere, so the untrained network filters with ``0.5 * identity + 0.5 * (k x k mean)`` for
    softmax kernels and with the identity for ``"none"``: a smoothing filter that still keeps half the detail.

    Multi-slice (``slices`` = S > 1, odd; beyond the paper, after the multi-frame KPN of burst denoising): the input
    holds S adjacent slices in slice order, (B, S * C, H, W) (slice-major), and the centre slice S // 2 is denoised.
    The kernel predictor sees all slices and predicts, per pixel, a k x k kernel for the centre slice and a
    kn x kn kernel (``neighbour_kernel_size``, default k) for each neighbour, normalised together by one softmax:
    ``out = sum_s Eq.1(slice_s, K_s)``, still a convex combination (a constant volume is returned unchanged).
    S = 1 is the single-slice network: same parameters, same outputs. Initialisation: the neighbour taps copy the
    centre kernel's initial logits (its central kn x kn taps) shifted so that the neighbours start with
    :data:`NEIGHBOUR_SHARE` of the weight, so the untrained network is the single-slice one on a volume whose slices
    agree, and close to it elsewhere (the neighbour taps are not set to ~0 weight: a softmax tap's gradient is
    proportional to its weight, so a tap at ~0 weight would never learn). :func:`multi_slice_state_dict` turns
    trained single-slice weights into a multi-slice warm start the same way.

    Inference memory: in eval mode the backbone runs once on the whole image, then the head, the normalisation
    and the local convolution run on bands of ``inference_band_rows`` output rows, so the (B, k * k, H, W) kernel
    tensor (0.46 GB for a 512 x 512 slice with k = 21) is never formed; training uses the plain full-image path.
    The band path computes the same function in a faster order (see :meth:`filter_band`): outputs differ from the
    full-image path by float rounding only (a few 1e-6 of the [0, 1] range: 0.01 HU on a real slice windowed over
    4096 HU).

    Args:
        in_channels: image channels; every channel is filtered with the same kernels (1 for CT).
        kernel_size: odd side k of the predicted kernels (the paper uses 21).
        preset: ``"lite"`` (default) or ``"authors"``, see :data:`STRUCTKPN_PRESETS`; it sets ``features``,
            ``num_res_blocks``, ``head_channels``, ``block_groups`` and ``downsample`` unless they are given.
        features: channels of the stem and the residual trunk.
        num_res_blocks: number of residual blocks.
        head_channels: channels entering the last 1 x 1 convolution.
        block_groups: groups of the 3 x 3 convolutions in the residual blocks (the "G2" of Fig. 1 is 2).
        downsample: resolution factor of the residual trunk, 1 = full resolution.
        kernel_norm: ``"softmax"`` or ``"none"``.
        inference_band_rows: output rows per band in eval mode.
        dose_aware: the input is (B, in_channels + 2, H, W): the image, then its blind local noise standard
            deviation and the dose fraction a (the channels of :class:`~bundle.transforms.AddDoseConditiond`). The
            kernel predictor sees the image, the noise it has (``noise_gain`` times channel 1) and the noise to
            remove, ``sqrt(1 - a)`` times it; the predicted kernels K are mixed with the identity,
            ``w * identity + (1 - w) * K`` with ``w`` from ``output_noise``, and applied by Eq. 1 as before (still a
            convex combination of the neighbourhood: mean HU kept). a = 1 returns the input exactly, and the output
            keeps a share of the input's noise that grows with a.
        output_noise: ``"normal_dose"`` (w = sqrt(a)) or ``"mmse"`` (w = a), dose-aware only. The input's noise is
            the normal-dose scan's plus the added noise, with variances in the ratio a : 1 - a. If K removed all
            noise, ``"normal_dose"`` would keep exactly the normal-dose noise level (sqrt(a) of the input's) with
            the input's own texture, and ``"mmse"`` would give the least squared error to the normal-dose image,
            whose own noise it cannot predict, at a noise level of sqrt(a) times the normal dose's (smoother).
        noise_gain: factor on the noise channel (in the image's units) seen by the kernel predictor: 40 brings
            noise in HU windowed over 4096 HU to about a hundredth of its HU value.
        inference_dtype: ``"float32"`` (default) or ``"bfloat16"``: in eval mode (eager, not TorchScript) run the
            backbone under ``torch.autocast`` in bfloat16; the kernel head, the softmax and Eq. 1 stay float32
            (bf16 logits, spread over ~100 a pixel, would move bright pixels by tens of HU). It moves single
            pixels by up to 1.5 HU on a chest slice; whether it is faster depends on the CPU: on the development
            machine (AVX-512 BF16) it was faster before freed memory was retained, not after
            (``docs/performance.md``).
        slices: odd number S of adjacent slices in the input; the centre one is denoised (1: the paper's network).
        neighbour_kernel_size: odd side kn <= k of the neighbour slices' kernels (None: k); needs ``slices > 1``.

    Example::

        >>> net = StructKPN().eval()  # "lite", 21 x 21 kernels
        >>> with torch.inference_mode():
        ...     net(torch.rand(1, 1, 37, 53)).shape  # CT windowed to [0, 1]
        torch.Size([1, 1, 37, 53])
    """

    SETTINGS_OMITTED_AT_DEFAULT = ("slices", "neighbour_kernel_size")
    """Settings a model's settings file records only away from their default (:func:`bundle.io.network_settings`):
    single-slice models keep the files they had before the multi-slice option."""

    def __init__(
        self,
        in_channels: int = 1,
        kernel_size: int = 21,
        preset: str = "lite",
        features: int | None = None,
        num_res_blocks: int | None = None,
        head_channels: int | None = None,
        block_groups: int | None = None,
        downsample: int | None = None,
        kernel_norm: str = "softmax",
        inference_band_rows: int = 16,
        inference_dtype: str = "float32",
        dose_aware: bool = False,
        output_noise: str = "normal_dose",
        noise_gain: float = 40.0,
        slices: int = 1,
        neighbour_kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        if preset not in STRUCTKPN_PRESETS:
            raise ValueError(f"preset must be one of {sorted(STRUCTKPN_PRESETS)}, got {preset!r}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
        if kernel_norm not in ("softmax", "none"):
            raise ValueError(f"kernel_norm must be 'softmax' or 'none', got {kernel_norm!r}.")
        if inference_band_rows < 1:
            raise ValueError(f"inference_band_rows must be positive, got {inference_band_rows}.")
        if output_noise not in ("normal_dose", "mmse"):
            raise ValueError(f"output_noise must be 'normal_dose' or 'mmse', got {output_noise!r}.")
        if inference_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"inference_dtype must be 'float32' or 'bfloat16', got {inference_dtype!r}.")
        check_slices(slices)
        if neighbour_kernel_size == kernel_size:
            neighbour_kernel_size = None  # the default, recorded as such
        if neighbour_kernel_size is not None and slices == 1:
            raise ValueError(f"neighbour_kernel_size={neighbour_kernel_size} needs slices > 1 (neighbour slices).")
        if neighbour_kernel_size is not None and not (
            0 < neighbour_kernel_size < kernel_size and neighbour_kernel_size % 2 == 1
        ):
            raise ValueError(
                f"neighbour_kernel_size must be odd and at most kernel_size={kernel_size}, got {neighbour_kernel_size}."
            )
        given = {
            "features": features,
            "num_res_blocks": num_res_blocks,
            "head_channels": head_channels,
            "block_groups": block_groups,
            "downsample": downsample,
        }
        settings = {
            name: value if value is not None else STRUCTKPN_PRESETS[preset][name] for name, value in given.items()
        }
        if settings["downsample"] < 1:
            raise ValueError(f"downsample must be >= 1, got {settings['downsample']}.")
        self.kernel_size = kernel_size
        self.kernel_norm = kernel_norm
        self.inference_band_rows = inference_band_rows
        self.inference_dtype = inference_dtype
        self.in_channels = in_channels
        self.dose_aware = dose_aware
        self.output_noise = output_noise
        self.noise_gain = float(noise_gain)
        self.slices = slices
        self.neighbour_kernel_size = neighbour_kernel_size
        self.neighbour_size = kernel_size if neighbour_kernel_size is None else neighbour_kernel_size
        self.features = settings["features"]
        self.num_res_blocks = settings["num_res_blocks"]
        self.head_channels = settings["head_channels"]
        self.block_groups = settings["block_groups"]
        self.downsample = settings["downsample"]

        width, factor = self.features, self.downsample
        stem_inputs = in_channels * slices + (2 if dose_aware else 0)
        self.stem = nn.Sequential(nn.Conv2d(stem_inputs, width, 3, padding=1), nn.ReLU())
        # kernel max(3, 2 * factor - 1) with "same" padding covers every pixel and gives ceil(H / factor) rows
        encode_size = max(3, 2 * factor - 1)
        self.encode = nn.Conv2d(width, width, encode_size, stride=factor, padding=encode_size // 2)
        self.trunk = nn.Sequential(*[_ResidualBlock(width, self.block_groups) for _ in range(self.num_res_blocks)])
        self.decode = (
            nn.Sequential(nn.Conv2d(width, width * factor * factor, 1), nn.PixelShuffle(factor))
            if factor > 1
            else nn.Identity()
        )
        self.head = nn.Sequential(
            nn.Conv2d(width, self.head_channels, 1),
            nn.ReLU(),
            nn.Conv2d(self.head_channels, self.num_taps, 1),
        )
        last = self.head[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        if kernel_size > 1:
            centre = kernel_size * kernel_size // 2
            with torch.no_grad():
                last.bias[centre] = 1.0 if kernel_norm == "none" else math.log(kernel_size * kernel_size - 1)
        if slices > 1 and kernel_norm == "softmax":  # "none": neighbour kernels 0, the single-slice filter exactly
            with torch.no_grad():
                centre_bias = last.bias[: kernel_size * kernel_size]
                last.bias[kernel_size * kernel_size :] = _neighbour_logits(
                    centre_bias, kernel_size, self.neighbour_size, slices, NEIGHBOUR_SHARE
                )

    @property
    def num_taps(self) -> int:
        """Kernel taps a pixel: k * k on the centre slice, kn * kn on each of the S - 1 neighbours."""
        return self.kernel_size * self.kernel_size + (self.slices - 1) * self.neighbour_size * self.neighbour_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise (B, C, H, W) ``x`` (e.g. CT windowed to [0, 1]); returns (B, C, H, W) in the same units.

        ``x`` is used as a plain contiguous tensor: a MetaTensor (every operation through its metadata handling)
        or a strided view (a slice of a volume, as SliceInferer passes) makes inference about twice as slow.
        Dose-aware: ``x`` is (B, C + 2, H, W) (image, noise std, dose fraction), the output (B, C, H, W).
        Multi-slice: (B, S * C, H, W), or (B, S * C + 2, H, W) dose-aware (the noise std of the centre slice), the
        output the centre slice (B, C, H, W).
        """
        if not torch.jit.is_scripting():
            x = _plain_tensor(x)
        image, predictor_input, identity_weight = self.split_input(x.contiguous())
        padded = pad_for_local_conv(image, self.kernel_size, "reflect")
        if not torch.jit.is_scripting() and self.inference_dtype == "bfloat16" and not self.training:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                features = self.backbone(predictor_input)
            filtered = self._filter(padded, features.float())
        else:
            filtered = self._filter(padded, self.backbone(predictor_input))
        if identity_weight is None:
            return filtered
        # w * x + (1 - w) * Kx: Eq. 1 with the kernel w * identity + (1 - w) * K
        return torch.lerp(filtered, self.centre_slice(image), identity_weight)

    def centre_slice(self, image: torch.Tensor) -> torch.Tensor:
        """The (B, C, H, W) centre slice of the (B, S * C, H, W) slices (the image itself when S = 1)."""
        centre = self.slices // 2 * self.in_channels
        return image[:, centre : centre + self.in_channels]

    def split_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        Split the network input (B, C, H, W), or (B, C + 2, H, W) when dose-aware, into the (B, C, H, W) image to
        filter, the kernel predictor's input (what :meth:`backbone` takes) and the identity weight w, (B, 1, H, W)
        (None unless dose-aware). :meth:`forward` is ``split_input``, :meth:`backbone`, then :meth:`filter_band` on
        each band of rows of the reflect-padded image (eval mode), then the identity mix ``lerp(filtered, image, w)``.
        Multi-slice: the image to filter is the (B, S * C, H, W) slices (the mix takes :meth:`centre_slice`).
        """
        channels = self.slices * self.in_channels
        if not self.dose_aware:
            if self.slices > 1 and x.shape[1] != channels:
                raise ValueError(
                    f"a StructKPN of {self.slices} slices takes {channels} channels (the slices in slice order), "
                    f"got {x.shape[1]} channels."
                )
            return x, x, None
        if x.shape[1] != channels + 2:
            slices = "" if self.slices == 1 else f" ({self.slices} slices)"
            raise ValueError(
                f"a dose-aware StructKPN takes {channels} image channel(s){slices}, the noise std and the dose "
                f"fraction, got {x.shape[1]} channels."
            )
        image = x[:, :channels].contiguous()
        noise = x[:, channels : channels + 1] * self.noise_gain
        dose = x[:, channels + 1 :].clamp(0.0, 1.0)
        predictor_input = torch.cat([image, noise, noise * torch.sqrt(1.0 - dose)], dim=1)
        identity_weight = torch.sqrt(dose) if self.output_noise == "normal_dose" else dose
        return image, predictor_input, identity_weight

    def _filter(self, padded: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """
        Predict the kernels from (B, features, H, W) ``features`` and apply them to the (B, S * C, H + k - 1, W + k - 1)
        reflect-padded slices: at once in training, band by band in eval mode. Returns (B, C, H, W).
        """
        if self.training:
            return self.apply_kernels(padded, self.kernels(features))
        height = features.shape[2]
        halo = self.kernel_size - 1
        out = padded.new_empty([padded.shape[0], self.in_channels, height, features.shape[3]])
        for top in range(0, height, self.inference_band_rows):
            bottom = min(top + self.inference_band_rows, height)
            out[:, :, top:bottom] = self.filter_band(features[:, :, top:bottom], padded[:, :, top : bottom + halo])
        return out

    def apply_kernels(self, padded: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """
        Eq. 1 over the slices: the (B, S * C, h + k - 1, W + k - 1) reflect-padded slices filtered with the
        (B, :attr:`num_taps`, h, W) kernels of :meth:`kernels`, ``sum_s local_conv2d_padded(slice_s, K_s)`` (a
        neighbour's kn x kn kernel meets the central rows and columns of its padding). Returns (B, C, h, W).
        """
        size, channels = self.kernel_size, self.in_channels
        centre = self.slices // 2
        centre_taps = size * size
        filtered = local_conv2d_padded(padded[:, centre * channels : (centre + 1) * channels], kernels[:, :centre_taps])
        neighbour, margin = self.neighbour_size, (self.kernel_size - self.neighbour_size) // 2
        rows, cols = kernels.shape[2] + neighbour - 1, kernels.shape[3] + neighbour - 1
        tap = centre_taps
        for index in range(self.slices):
            if index == centre:
                continue
            window = padded[:, index * channels : (index + 1) * channels, margin : margin + rows, margin : margin + cols]
            filtered = filtered + local_conv2d_padded(window, kernels[:, tap : tap + neighbour * neighbour])
            tap += neighbour * neighbour
        return filtered

    def filter_band(self, features: torch.Tensor, padded_band: torch.Tensor) -> torch.Tensor:
        """
        Eval-mode head, normalisation and Eq. 1 for a band of h rows: the same result as
        ``self.apply_kernels(padded_band, self.kernels(features))`` up to float rounding, about 3 times faster
        on a CPU (``docs/performance.md``). Three changes, none of which alters the arithmetic:

        - the 1 x 1 head convolutions run as batched matrix products over the band's pixels (``Conv2d`` is about
          3 times slower for a 16 x 512 band);
        - the output rows of the head are taken in reverse tap order, so tap ``i * k + j`` weights
          ``padded_band[m + i, n + j]``: each kernel row then meets a strided view of k shifted windows of the
          image, and Eq. 1 runs as k multiply-and-sum steps instead of k * k (one per tap); multi-slice, the
          reversed rows hold the neighbours' kernels last to first, then the centre's;
        - the softmax is exponentiated base 2 with the logits scaled by log2(e) (the same weights, ``exp2`` is
          several times cheaper than ``exp``), and normalised after filtering: one division a pixel instead of
          one a tap.

        Args:
            features: (B, features, h, W) backbone features of the band's rows.
            padded_band: (B, S * C, h + k - 1, W + k - 1) rows of the reflect-padded slices the band needs.

        Returns:
            (B, C, h, W).
        """
        batch, rows, width = features.shape[0], features.shape[2], features.shape[3]
        size = self.kernel_size
        hidden_conv, output_conv = self.head[0], self.head[2]
        hidden_bias, output_bias = hidden_conv.bias, output_conv.bias
        assert hidden_bias is not None and output_bias is not None  # both head convolutions have a bias
        pixels = features.reshape(batch, features.shape[1], rows * width)
        hidden_weight = hidden_conv.weight.flatten(1).expand(batch, -1, -1)
        hidden = torch.baddbmm(hidden_bias.view(1, -1, 1), hidden_weight, pixels).relu_()
        output_weight, output_bias = output_conv.weight.flatten(1).flip(0), output_bias.flip(0)
        softmax = self.kernel_norm == "softmax"
        if softmax:  # exp(z) = exp2(z * log2(e))
            log2_e = 1.4426950408889634
            output_weight, output_bias = output_weight * log2_e, output_bias * log2_e
        logits = torch.baddbmm(output_bias.view(1, -1, 1), output_weight.expand(batch, -1, -1), hidden)
        if softmax:  # the max only guards exp2 against overflow: softmax does not depend on it, no gradient needed
            weights = logits.sub_(logits.amax(dim=1, keepdim=True).detach()).exp2_()
        else:
            weights = logits
        channels, centre = self.in_channels, self.slices // 2
        centre_start = self.num_taps - size * size  # reversed: the neighbours' taps, then the centre's
        centre_weights = weights[:, centre_start:].view(batch, 1, size, size, rows, width)
        centre_band = padded_band[:, centre * channels : (centre + 1) * channels]
        windows = centre_band.unfold(2, rows, 1).unfold(3, width, 1)  # (B, C, k, k, h, W): padded[m + i, n + j]
        filtered = torch.sum(centre_weights[:, :, 0] * windows[:, :, 0], dim=2)
        for row in range(1, size):
            filtered += torch.sum(centre_weights[:, :, row] * windows[:, :, row], dim=2)
        total = centre_weights.sum(dim=(2, 3))  # the softmax's normaliser (unused without softmax)
        neighbour, margin = self.neighbour_size, (size - self.neighbour_size) // 2
        tap = centre_start
        for index in range(self.slices):  # neighbour slice `index`: its reversed taps end where the next one's begin
            if index == centre:
                continue
            tap -= neighbour * neighbour
            block = weights[:, tap : tap + neighbour * neighbour].view(batch, 1, neighbour, neighbour, rows, width)
            band = padded_band[:, index * channels : (index + 1) * channels,
                               margin : margin + rows + neighbour - 1, margin : margin + width + neighbour - 1]  # fmt: skip
            windows = band.unfold(2, rows, 1).unfold(3, width, 1)
            for row in range(neighbour):
                filtered += torch.sum(block[:, :, row] * windows[:, :, row], dim=2)
            total = total + block.sum(dim=(2, 3))
        if softmax:
            filtered = filtered / total
        return filtered

    @torch.jit.unused
    def compile_inference(self, **options: object) -> StructKPN:
        """Compile this instance's eval-mode stages with ``torch.compile(..., **options)``: :meth:`backbone` and
        :meth:`filter_band` (its k steps unrolled). The first call then compiles (tens of seconds on a CPU); the
        numerics are those of the eager stages up to float rounding. Returns ``self``. Not for TorchScript export."""
        self.backbone = torch.compile(self.backbone, **options)  # type: ignore[method-assign]
        self.filter_band = torch.compile(self.filter_band, **options)  # type: ignore[method-assign]
        return self

    @torch.jit.export
    def predict_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """
        Normalised kernels (B, k * k, H, W) that :meth:`forward` applies to (B, C, H, W) ``x``, for visualisation
        (dose-aware: mixed with the identity, as applied).

        Tap ``(s + r) * k + t + r`` weights ``x[m - s, n - t]`` (Eq. 1), so ``kernels.view(B, k, k, H, W)``
        flipped on both kernel axes is the stencil over the neighbourhood as it lies in the image (rows
        ``m - r .. m + r`` top to bottom). Formed for the whole image: about 0.46 GB a 512 x 512 slice for k = 21.
        Multi-slice: (B, :attr:`num_taps`, H, W), the centre slice's k * k taps first, then kn * kn taps for each
        neighbour in slice order (the centre skipped), each block in the same order.
        """
        image, predictor_input, identity_weight = self.split_input(x)
        kernels = self.kernels(self.backbone(predictor_input))
        if identity_weight is None:
            return kernels
        identity = torch.zeros_like(kernels[:1, :, :1, :1])
        identity[:, self.kernel_size * self.kernel_size // 2] = 1.0
        return torch.lerp(kernels, identity, identity_weight)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, features, H, W) at full resolution of the kernel predictor's (B, C', H, W) input
        (the second output of :meth:`split_input`)."""
        stem = self.stem(x)
        # the residual trunk runs channels-last (faster convolutions on CPU); the rest stays planar (NCHW)
        trunk = self.trunk(self.encode(stem).contiguous(memory_format=torch.channels_last)).contiguous()
        features = self.decode(trunk)
        if self.downsample > 1:
            features = features[:, :, : x.shape[2], : x.shape[3]] + stem
        return features

    def kernels(self, features: torch.Tensor) -> torch.Tensor:
        """Head (``Conv2d`` layers) and normalisation of :meth:`backbone` features: (B, features, h, W) ->
        (B, :attr:`num_taps`, h, W) kernels (k * k single-slice), one softmax over all taps.
        ``apply_kernels(padded_band, kernels(features))`` is the reference that :meth:`filter_band` computes faster
        (the training path; the eval path before the band changes)."""
        logits = self.head(features)
        if self.kernel_norm == "softmax":
            return torch.softmax(logits, dim=1)
        return logits


def dose_aware_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    The weights of a single-dose StructKPN as those of a dose-aware one (``dose_aware=True``, same settings): the
    stem gains zero weights for the two conditioning inputs, so the kernels are those of the single-dose network
    and only the identity mix ``w`` depends on the dose. A warm start for training; other tensors are shared.
    """
    converted = dict(state_dict)
    stem = state_dict["stem.0.weight"]  # (features, in_channels, 3, 3)
    converted["stem.0.weight"] = torch.cat([stem, stem.new_zeros(stem.shape[0], 2, *stem.shape[2:])], dim=1)
    return converted


def _neighbour_logits(
    centre: torch.Tensor, kernel_size: int, neighbour_size: int, slices: int, neighbour_share: float
) -> torch.Tensor:
    """
    Neighbour rows ((S - 1) * kn * kn, ...) of the last head convolution's weight or bias from its centre rows
    (k * k, ...): the central kn x kn taps of the centre kernel for each neighbour, in tap order, plus (a bias) the
    logit offset that gives the neighbours ``neighbour_share`` of the softmax weight when kn = k.
    """
    margin = (kernel_size - neighbour_size) // 2
    rows = torch.arange(margin, margin + neighbour_size, device=centre.device)
    inner = centre[(rows[:, None] * kernel_size + rows[None, :]).flatten()]
    neighbours = inner.repeat(slices - 1, *([1] * (centre.dim() - 1)))
    if centre.dim() > 1:  # a weight: the neighbour logits follow the centre's
        return neighbours
    return neighbours + math.log(neighbour_share / ((slices - 1) * (1.0 - neighbour_share)))


def multi_slice_state_dict(
    state_dict: dict[str, torch.Tensor],
    slices: int,
    neighbour_kernel_size: int | None = None,
    in_channels: int = 1,
    kernel_norm: str = "softmax",
    neighbour_share: float = NEIGHBOUR_SHARE,
) -> dict[str, torch.Tensor]:
    """
    The weights of a single-slice StructKPN (dose-aware or not) as those of the same network with ``slices``
    (S, odd) adjacent slices: a warm start for training, loaded strictly by ``StructKPN(slices=S, ...)``.

    The stem gains zero weights for the neighbour slices (the kernels are predicted from the centre slice, as
    before); the neighbours' kernel logits copy the centre kernel's (its central kn x kn taps,
    ``neighbour_kernel_size``, default k) plus one offset, so that with kn = k the neighbours get
    ``neighbour_share`` of every pixel's weight, each neighbour tap in proportion to its centre tap. On a volume whose
    slices agree the network is then the single-slice one exactly (kn = k). With ``kernel_norm="none"`` the
    neighbour kernels are 0: the single-slice filter for any input. Other tensors are shared.
    """
    check_slices(slices)
    if not 0.0 < neighbour_share < 1.0:
        raise ValueError(f"neighbour_share must be in (0, 1), got {neighbour_share}.")
    weight, bias, stem = state_dict["head.2.weight"], state_dict["head.2.bias"], state_dict["stem.0.weight"]
    try:
        kernel_size = kernel_size_from_taps(weight.shape[0])
    except ValueError:
        raise ValueError(f"the head gives {weight.shape[0]} taps, not k * k: not a single-slice StructKPN.") from None
    neighbour = kernel_size if neighbour_kernel_size is None else neighbour_kernel_size
    if not 0 < neighbour <= kernel_size or neighbour % 2 == 0:
        raise ValueError(f"neighbour_kernel_size must be odd and at most {kernel_size}, got {neighbour_kernel_size}.")
    conditioning = stem.shape[1] - in_channels
    if conditioning not in (0, 2):
        raise ValueError(
            f"the stem takes {stem.shape[1]} channels: not a single-slice StructKPN of {in_channels} channel(s)."
        )
    converted = dict(state_dict)
    if slices == 1:
        return converted
    centre = slices // 2 * in_channels
    widened = stem.new_zeros(stem.shape[0], slices * in_channels + conditioning, *stem.shape[2:])
    widened[:, centre : centre + in_channels] = stem[:, :in_channels]
    widened[:, slices * in_channels :] = stem[:, in_channels:]
    converted["stem.0.weight"] = widened
    if kernel_norm == "softmax":
        rows = [_neighbour_logits(t, kernel_size, neighbour, slices, neighbour_share) for t in (weight, bias)]
    elif kernel_norm == "none":
        rows = [t.new_zeros((slices - 1) * neighbour * neighbour, *t.shape[1:]) for t in (weight, bias)]
    else:
        raise ValueError(f"kernel_norm must be 'softmax' or 'none', got {kernel_norm!r}.")
    converted["head.2.weight"] = torch.cat([weight, rows[0]])
    converted["head.2.bias"] = torch.cat([bias, rows[1]])
    return converted
