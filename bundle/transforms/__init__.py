from .ct import ValidateCTImaged
from .statistics import GradientStatistics, GradientStatisticsd
