"""Projection-domain low-dose CT simulation (noise insertion from normal-dose slices, Yu et al. 2012)."""

from .low_dose import (
    MU_WATER_PER_MM,
    RECONSTRUCTION_FILTERS,
    LowDoseSimulator,
    SimulateLowDosed,
    hu_to_attenuation,
    log_domain_noise_std,
    out_of_field_mask,
    simulate_low_dose,
)

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
