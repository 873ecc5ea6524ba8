// A fresh large buffer costs its page faults on first write: about 35 ms for the 88 MB
// gradient of a 4x21x513x513 fp32 loss on this kind of machine, as much as the rest of the op.
// So freed buffers are kept (up to a byte budget) and handed out again, the way the CUDA caching
// allocator does it. Requests are rounded up to size classes, four per power of two (at most 25%
// more than asked, untouched pages of which cost no memory), so shapes that vary from step to step
// (random crops, a last smaller batch) share blocks instead of each keeping its own.
// (Transparent huge pages were tried for new blocks: with the kernel's default defrag=madvise
// policy a fresh block could stall for 200+ ms in page compaction, worse than 4 KiB faults.)
//
// Budget: SEMISEG_FAST_CPU_CACHE_MB (default 1024; 0 disables caching), changeable at run
// time; semiseg_fast.empty_cpu_cache() returns everything to the system.
#include "buffer_pool.h"

#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>


namespace ssf {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;  // smaller buffers go to the default allocator
constexpr size_t kAlign = 4096;                       // page-aligned blocks
constexpr int kClassesPerDoubling = 4;

// The smallest size class holding `bytes` (>= kMinPooledBytes): a multiple of 1/4 of the power of
// two at or below it.
size_t size_class(size_t bytes) {
  size_t power = kMinPooledBytes;
  while (power * 2 <= bytes) power *= 2;
  const size_t step = power / kClassesPerDoubling;
  return (bytes + step - 1) / step * step;
}

class Pool {
 public:
  Pool() {
    const char* env = std::getenv("SEMISEG_FAST_CPU_CACHE_MB");
    limit_ = (env ? std::atoll(env) : 1024) * (int64_t(1) << 20);
    if (limit_ < 0) limit_ = 0;
  }

  void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        size_of_[p] = bytes;
        return p;
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, kAlign, bytes) != 0 || !p) TORCH_CHECK(false, "semiseg_fast: out of memory allocating ", bytes, " bytes");
    std::lock_guard<std::mutex> g(mu_);
    size_of_[p] = bytes;
    return p;
  }

  void release(void* p) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = size_of_.find(p);
    const size_t bytes = it->second;
    size_of_.erase(it);
    if (cached_ + (int64_t)bytes <= limit_) {
      free_[bytes].push_back(p);
      cached_ += bytes;
    } else {
      std::free(p);
    }
  }

  void empty() {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& kv : free_)
      for (void* p : kv.second) std::free(p);
    free_.clear();
    cached_ = 0;
  }

  void trim_to_limit() {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& kv : free_) {
      while (cached_ > limit_ && !kv.second.empty()) {
        std::free(kv.second.back());
        kv.second.pop_back();
        cached_ -= kv.first;
      }
    }
  }

  int64_t cached() {
    std::lock_guard<std::mutex> g(mu_);
    return cached_;
  }
  int64_t limit() {
    std::lock_guard<std::mutex> g(mu_);
    return limit_;
  }
  void set_limit(int64_t l) {
    {
      std::lock_guard<std::mutex> g(mu_);
      limit_ = l < 0 ? 0 : l;
    }
    trim_to_limit();
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, size_t> size_of_;  // live blocks
  int64_t cached_ = 0;
  int64_t limit_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

at::Tensor from_pool(at::IntArrayRef sizes, at::IntArrayRef strides, at::ScalarType dtype) {
  int64_t span = 1;  // elements between the first and one past the last
  bool empty = false;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) empty = true;
    span += (sizes[d] - 1) * strides[d];
  }
  const size_t bytes = empty ? 0 : (size_t)span * at::elementSize(dtype);
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  if (bytes < kMinPooledBytes || pool().limit() == 0) return at::empty_strided(sizes, strides, options);
  void* p = pool().acquire(size_class(bytes));
  return at::from_blob(p, sizes, strides, [](void* q) { pool().release(q); }, options);
}

}  // namespace

at::Tensor pooled_empty_like(const at::Tensor& like, at::ScalarType dtype) {
  // empty_like's layout rules (dense strides kept, channels_last kept, otherwise contiguous),
  // computed on the meta device so nothing is allocated.
  const at::Tensor meta = at::empty_like(like, like.options().device(at::kMeta));
  return from_pool(meta.sizes(), meta.strides(), dtype);
}

at::Tensor pooled_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  std::vector<int64_t> strides(sizes.size());
  int64_t s = 1;
  for (int64_t d = (int64_t)sizes.size() - 1; d >= 0; --d) {
    strides[d] = s;
    s *= sizes[d] > 1 ? sizes[d] : 1;
  }
  return from_pool(sizes, strides, dtype);
}

void pool_empty_cache() { pool().empty(); }
int64_t pool_cached_bytes() { return pool().cached(); }
int64_t pool_limit_bytes() { return pool().limit(); }
void pool_set_limit_bytes(int64_t limit) { pool().set_limit(limit); }

}  // namespace ssf
