from .ct import ValidateCTImaged
from .statistics import GradientStatistics, GradientStatisticsd
from .noise_level import NOISE_BIAS_ON_FBP_NOISE, AddDoseConditiond, local_noise_std
from .neighbour_slices import GAP_FACTOR, AddNeighbourSlicesd, StackNeighbourSlicesd, neighbour_indices, slice_positions_mm
