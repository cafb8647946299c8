from .ct_dicom import CTDicomReader, CTInputError, CTSlice, check_ct_dataset, padding_mask, read_ct_slice
from .nifti_writer import AtomicNibabelWriter
from .paths import find_ct_inputs, require_checkpoint
