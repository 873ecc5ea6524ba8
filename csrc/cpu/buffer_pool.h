// Recycling of the large output buffers of the CPU ops (gradients, per-pixel maps).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace ssf {

// An uninitialised tensor of `dtype` shaped and strided like empty_like(like), drawn from the pool.
at::Tensor pooled_empty_like(const at::Tensor& like, at::ScalarType dtype);
// An uninitialised contiguous tensor, drawn from the pool.
at::Tensor pooled_empty(at::IntArrayRef sizes, at::ScalarType dtype);

void pool_empty_cache();
int64_t pool_cached_bytes();
int64_t pool_limit_bytes();
void pool_set_limit_bytes(int64_t limit);

}  // namespace ssf
