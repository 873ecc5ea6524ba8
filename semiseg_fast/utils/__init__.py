"""Small utilities that are not ops."""
from .memory import saved_tensor_bytes

__all__ = ["saved_tensor_bytes"]
