from .denoise import DEFAULT_MODEL_NAME, StructKPNDenoise

__all__ = ["DEFAULT_MODEL_NAME", "StructKPNDenoise"]
