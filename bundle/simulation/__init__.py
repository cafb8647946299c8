"""Projection-domain low-dose CT simulation (noise insertion from normal-dose slices, Yu et al. 2012) and simulated
paired low-dose / normal-dose datasets."""

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
from .dose_noise import RandDoseNoised, added_noise_scale
from .paired import (
    NDCT_FOLDER,
    UID_ENTROPY_TAG,
    add_simulator_arguments,
    copy_atomically,
    derivation_description,
    ldct_folder,
    prepare_dicom_series,
    prepare_nifti_volume,
    prepare_simulated_pairs,
    simulate_dicom_input,
    simulate_dicom_slice,
    simulator_from_arguments,
    slice_rng,
    write_split_datalist,
)
from .phantoms import ImageQualityPhantom, PhantomScans, image_quality_phantom, simulate_phantom_scans

__all__ = [
    "MU_WATER_PER_MM",
    "RECONSTRUCTION_FILTERS",
    "NDCT_FOLDER",
    "UID_ENTROPY_TAG",
    "ImageQualityPhantom",
    "LowDoseSimulator",
    "PhantomScans",
    "RandDoseNoised",
    "SimulateLowDosed",
    "added_noise_scale",
    "add_simulator_arguments",
    "copy_atomically",
    "derivation_description",
    "hu_to_attenuation",
    "image_quality_phantom",
    "ldct_folder",
    "log_domain_noise_std",
    "out_of_field_mask",
    "prepare_dicom_series",
    "prepare_nifti_volume",
    "prepare_simulated_pairs",
    "simulate_dicom_input",
    "simulate_dicom_slice",
    "simulate_low_dose",
    "simulate_phantom_scans",
    "simulator_from_arguments",
    "slice_rng",
    "write_split_datalist",
]
