"""Small utilities that are not ops."""

from .memory import cpu_cache_info, empty_cpu_cache, saved_tensor_bytes, set_cpu_cache_limit

__all__ = ["cpu_cache_info", "empty_cpu_cache", "saved_tensor_bytes", "set_cpu_cache_limit"]
