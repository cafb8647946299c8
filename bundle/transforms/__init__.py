from .ct import ValidateCTImaged
