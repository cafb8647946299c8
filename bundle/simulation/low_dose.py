"""Projection-domain low-dose CT simulation from a normal-dose slice in HU (Yu et al. 2012 noise insertion).

The slice is turned into linear attenuation, forward projected (parallel beam, astra-toolbox CPU), the extra
log-domain noise of a scan at ``dose_fraction`` of the original dose is drawn per ray, and only that noise is
reconstructed by filtered back-projection and added to the slice. The noiseless part of the result is therefore
exactly the normal-dose slice, and the added noise has the texture of real CT noise: correlated (ramp-shaped
noise power spectrum) and streaky along strongly attenuating paths.

Example::

    ldct_hu = simulate_low_dose(ndct_hu, dose_fraction=0.25, pixel_spacing_mm=0.7, rng=np.random.default_rng(0))
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable, Mapping, Sequence

import astra
import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_dst_type, ensure_tuple_rep
from scipy import ndimage

__all__ = [
    "MU_WATER_PER_MM",
    "RECONSTRUCTION_FILTERS",
    "LowDoseSimulator",
    "SimulateLowDosed",
    "hu_to_attenuation",
    "log_domain_noise_std",
    "out_of_field_mask",
    "simulate_low_dose",
]

#: Linear attenuation coefficient of water (/mm) at ~70 keV, the effective energy of a 120 kVp CT beam
#: (NIST XCOM mass attenuation of water 0.193 cm^2/g at 70 keV).
MU_WATER_PER_MM = 0.0192

#: Filters of the filtered back-projection (astra-toolbox names): the ramp (ram-lak) alone or apodised.
RECONSTRUCTION_FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")

#: Lowest HU of a scanned pixel; anything below is padding written by the scanner outside the field of view.
AIR_FLOOR_HU = -1024.0


def hu_to_attenuation(hu: np.ndarray, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """Linear attenuation mu = mu_water (1 + HU / 1000) in /mm, clipped at 0 (HU below -1000 is air)."""
    return np.clip(mu_water_per_mm * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0, None)


def log_domain_noise_std(
    line_integrals: np.ndarray, dose_fraction: float, incident_photons: float, electronic_noise_std: float = 0.0
) -> np.ndarray:
    """Standard deviation of the extra log-domain noise that turns a full-dose scan into a ``dose_fraction`` one.

    Yu et al. 2012: with line integrals p (dimensionless, mm x /mm), dose fraction a, incident counts per ray I0
    and electronic noise variance se^2 (counts^2),
    ``std = sqrt((1 - a) / a * e^p / I0 * (1 + (1 + a) / a * se^2 * e^p / I0))``.

    Example::

        log_domain_noise_std(np.array([0.0, 5.0]), 0.25, 1e5)  # ~[0.0055, 0.067]
    """
    a = float(dose_fraction)
    relative_variance = np.exp(line_integrals) / float(incident_photons)
    return np.sqrt(
        (1.0 - a) / a * relative_variance * (1.0 + (1.0 + a) / a * electronic_noise_std**2 * relative_variance)
    )


def out_of_field_mask(hu: np.ndarray, padding: np.ndarray | None = None) -> np.ndarray:
    """Pixels outside the scanner's field of view, which a simulation must leave untouched (bool, shape of ``hu``).

    These are the declared ``padding`` (PixelPaddingValue), every pixel below -1024 HU (padding written as e.g.
    -2000 or -3024 HU), and the regions at exactly -1024 HU or below that touch the image border and cover at least
    one image row's worth of pixels: the constant ring some scanners write outside the scan circle without declaring
    it. Air inside the field of view is noisy, so its pixels clipped at -1024 HU form only small specks.
    """
    hu = np.asarray(hu)
    mask = hu < AIR_FLOOR_HU
    if padding is not None:
        mask |= np.asarray(padding, dtype=bool)
    labels, count = ndimage.label(hu <= AIR_FLOOR_HU)
    if count:
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        border = border[border > 0]
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        ring = border[sizes[border] >= max(hu.shape)]
        mask |= np.isin(labels, ring)
    return mask


class LowDoseSimulator:
    """Projection-domain low-dose simulator with a parallel-beam geometry built once per slice size.

    Args:
        incident_photons: I0, the full-dose incident counts per ray and view (calibrates the noise level).
        electronic_noise_std: detector electronic noise standard deviation se, in counts.
        num_views: projection angles over 180 degrees.
        filter_name: filtered back-projection filter, one of :data:`RECONSTRUCTION_FILTERS`.
        projector: astra-toolbox CPU projector: ``"linear"`` (Joseph, interpolating), ``"line"`` (as fast, but
            aliases more high-frequency noise) or ``"strip"`` (area-weighted, about twice as slow).

    The detector has one cell per pixel and spans the image diagonal, so the whole slice is projected.

    Example::

        simulator = LowDoseSimulator()
        ldct_hu = simulator(ndct_hu, dose_fraction=0.25, pixel_spacing_mm=0.7, rng=np.random.default_rng(0))
    """

    def __init__(
        self,
        incident_photons: float = 2.0e5,
        electronic_noise_std: float = 5.0,
        num_views: int = 720,
        filter_name: str = "hann",
        projector: str = "linear",
    ) -> None:
        if filter_name not in RECONSTRUCTION_FILTERS:
            raise ValueError(f"filter_name {filter_name!r} is not one of {RECONSTRUCTION_FILTERS}")
        if projector not in ("linear", "line", "strip"):
            raise ValueError(f"projector {projector!r} is not one of ('linear', 'line', 'strip')")
        if incident_photons <= 0 or electronic_noise_std < 0 or num_views < 1:
            raise ValueError("incident_photons and num_views must be positive and electronic_noise_std non-negative")
        self.incident_photons = float(incident_photons)
        self.electronic_noise_std = float(electronic_noise_std)
        self.num_views = int(num_views)
        self.filter_name = filter_name
        self.projector = projector
        self._operators: dict[tuple[int, int], astra.OpTomo] = {}
        self._lock = threading.Lock()

    def operator(self, shape: tuple[int, int]) -> astra.OpTomo:
        """The astra forward projector (as a linear operator) for slices of ``shape`` (rows, columns)."""
        shape = (int(shape[0]), int(shape[1]))
        if shape not in self._operators:
            volume = astra.create_vol_geom(*shape)
            detector_count = int(np.ceil(np.hypot(*shape))) + 1
            angles = np.linspace(0.0, np.pi, self.num_views, endpoint=False)
            geometry = astra.create_proj_geom("parallel", 1.0, detector_count, angles)
            projector_id = astra.create_projector(self.projector, geometry, volume)
            operator = astra.OpTomo(projector_id)
            weakref.finalize(operator, astra.projector.delete, projector_id)  # freed with its last user
            self._operators[shape] = operator
        return self._operators[shape]

    def noise_hu(
        self,
        hu: np.ndarray,
        dose_fraction: float,
        pixel_spacing_mm: float,
        rng: np.random.Generator,
        field_of_view: np.ndarray | None = None,
    ) -> np.ndarray:
        """The added noise image in HU, float32 (H, W), for a slice ``hu`` (H, W) with square pixels of
        ``pixel_spacing_mm``; ``field_of_view`` (bool) marks the pixels that attenuate (all when None)."""
        if not 0.0 < dose_fraction <= 1.0:
            raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
        if pixel_spacing_mm <= 0:
            raise ValueError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm}")
        attenuation_per_pixel = hu_to_attenuation(hu) * pixel_spacing_mm  # /mm x mm: the line integral per pixel
        if field_of_view is not None:
            attenuation_per_pixel[~field_of_view] = 0.0
        with self._lock:
            operator = self.operator(hu.shape)
            line_integrals = np.maximum(operator.FP(attenuation_per_pixel.astype(np.float32)), 0.0)
            noise_std = log_domain_noise_std(
                line_integrals, dose_fraction, self.incident_photons, self.electronic_noise_std
            )
            noise = (noise_std * rng.standard_normal(line_integrals.shape)).astype(np.float32)
            noise_per_pixel = operator.reconstruct("FBP", noise, extraOptions={"FilterType": self.filter_name})
        return (noise_per_pixel * (1000.0 / (MU_WATER_PER_MM * pixel_spacing_mm))).astype(np.float32)

    def __call__(
        self,
        hu: np.ndarray,
        dose_fraction: float = 0.25,
        pixel_spacing_mm: float = 0.75,
        padding: np.ndarray | None = None,
        rng: np.random.Generator | int | None = None,
    ) -> np.ndarray:
        """Simulated low-dose slice in HU, float32 (H, W); pixels of :func:`out_of_field_mask` keep their input value.

        ``rng`` is a numpy Generator or a seed; the same seed gives the same slice.
        """
        hu = np.asarray(hu, dtype=np.float32)
        if hu.ndim != 2:
            raise ValueError(f"expected a 2D slice (H, W), got shape {hu.shape}")
        if dose_fraction == 1.0:
            return hu.copy()
        untouched = out_of_field_mask(hu, padding)
        noise = self.noise_hu(hu, dose_fraction, pixel_spacing_mm, np.random.default_rng(rng), ~untouched)
        return np.where(untouched, hu, hu + noise)

    def __getstate__(self) -> dict:
        """Pickle without the astra projectors (process-local handles); they are rebuilt on first use."""
        state = self.__dict__.copy()
        state["_operators"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def simulate_low_dose(
    hu: np.ndarray,
    dose_fraction: float = 0.25,
    incident_photons: float = 2.0e5,
    electronic_noise_std: float = 5.0,
    num_views: int = 720,
    filter_name: str = "hann",
    pixel_spacing_mm: float = 0.75,
    padding: np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Simulate a ``dose_fraction`` scan of the normal-dose slice ``hu`` (H, W) in HU; returns float32 HU (H, W).

    A one-call form of :class:`LowDoseSimulator` (which see for the parameters); build a simulator to process
    many slices. Pixels outside the field of view (``padding``, see :func:`out_of_field_mask`) are left as given.

    Example::

        ldct_hu = simulate_low_dose(ndct_hu, dose_fraction=0.1, pixel_spacing_mm=0.65, rng=0)
    """
    simulator = LowDoseSimulator(incident_photons, electronic_noise_std, num_views, filter_name)
    return simulator(hu, dose_fraction, pixel_spacing_mm, padding, rng)


class SimulateLowDosed(Randomizable, MapTransform):
    """Dictionary transform: simulate a low-dose image from normal-dose HU, at a random dose in a range.

    Works on channel-first 2D (C, H, W) or 3D (C, H, W, D) data, slice by slice over the last axis for 3D. The
    pixel spacing comes from the MetaTensor's affine (``pixdim``) unless ``pixel_spacing_mm`` is given.

    Args:
        keys: keys of the normal-dose HU images.
        dose_range: (low, high) dose fractions; each call draws one uniformly (a single value fixes it).
        output_keys: where to store the simulated images (default: replace the inputs).
        dose_key: key to record the drawn dose fraction under (None: not recorded).
        pixel_spacing_mm: in-plane pixel spacing, overriding the metadata.
        simulator: the :class:`LowDoseSimulator` to use (its defaults when None).

    Example::

        SimulateLowDosed(keys="label", output_keys="image", dose_range=(0.1, 0.5))  # on-the-fly training pairs
    """

    def __init__(
        self,
        keys: KeysCollection,
        dose_range: float | Sequence[float] = (0.25, 0.25),
        output_keys: KeysCollection | None = None,
        dose_key: str | None = "dose_fraction",
        pixel_spacing_mm: float | None = None,
        simulator: LowDoseSimulator | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        low, high = ensure_tuple_rep(dose_range, 2) if np.ndim(dose_range) == 0 else tuple(dose_range)
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"dose_range must satisfy 0 < low <= high <= 1, got {dose_range}")
        self.dose_range = (float(low), float(high))
        self.output_keys = ensure_tuple_rep(output_keys, len(self.keys)) if output_keys is not None else self.keys
        self.dose_key = dose_key
        self.pixel_spacing_mm = pixel_spacing_mm
        self.simulator = simulator or LowDoseSimulator()
        self._dose_fraction = self.dose_range[0]
        self._noise_seed = 0

    def randomize(self, data: object = None) -> None:
        self._dose_fraction = float(self.R.uniform(*self.dose_range))
        self._noise_seed = int(self.R.randint(0, 2**31 - 1))

    def _spacing(self, image: object, key: Hashable) -> float:
        if self.pixel_spacing_mm is not None:
            return float(self.pixel_spacing_mm)
        if isinstance(image, MetaTensor):
            return float(np.mean(np.asarray(image.pixdim[:2], dtype=float)))
        raise ValueError(f"{key}: no pixel spacing (not a MetaTensor); give pixel_spacing_mm")

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        self.randomize()
        rng = np.random.default_rng(self._noise_seed)
        for key, output_key in self.key_iterator(d, self.output_keys):
            image = d[key]
            spacing = self._spacing(image, key)
            array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
            if array.ndim not in (3, 4):
                raise ValueError(f"{key}: expected channel-first (C, H, W) or (C, H, W, D), got shape {array.shape}")
            slices = array[..., None] if array.ndim == 3 else array
            low_dose = np.empty_like(slices)
            for c in range(slices.shape[0]):
                for z in range(slices.shape[-1]):
                    low_dose[c, ..., z] = self.simulator(slices[c, ..., z], self._dose_fraction, spacing, rng=rng)
            d[output_key] = convert_to_dst_type(low_dose.reshape(array.shape), image, dtype=np.float32)[0]
        if self.dose_key is not None:
            d[self.dose_key] = self._dose_fraction
        return d
