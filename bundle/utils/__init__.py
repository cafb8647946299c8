from bundle.utils.profiling import PeakMemorySampler, resident_memory_bytes

__all__ = ["PeakMemorySampler", "resident_memory_bytes"]
