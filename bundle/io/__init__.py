from .ct_dicom import (
    SOURCE_FILES_KEY,
    CTDicomReader,
    CTInputError,
    CTSlice,
    FrameGeometry,
    check_ct_dataset,
    frame_geometry,
    frame_rescales,
    is_multiframe,
    padding_mask,
    read_ct_slice,
    read_dicom,
    rescale_of,
)
from .nifti_writer import AtomicNibabelWriter
from .paths import DERIVED_MARK, OutputDirError, check_output_dir, find_ct_inputs, require_checkpoint
from .series_writer import OUTPUT_FORMATS, SaveCTSeriesd, derived_series_path, file_sha256
from .datalist import SPLITS, build_datalist, neighbour_keys, split_patients, with_neighbour_slices, write_datalist
from .dicom_writer import (
    hu_to_stored,
    stored_value_range,
    write_dataset_atomically,
    write_derived_multiframe,
    write_derived_slice,
)
from .layouts import (
    SliceHeader,
    find_dicom_series,
    find_nifti_volumes,
    mayo_pairs,
    pair_slices_by_position,
    read_slice_headers,
    tcia_dose_fraction,
    tcia_ldct_pairs,
)
from .atomic import atomic_output, remove_stale_partials
from .exposure import exposure_dose_fractions, exposure_mas
from .model_settings import (
    ModelSettingsError,
    check_model_settings,
    model_settings,
    network_settings,
    settings_path,
    write_model_settings,
)
