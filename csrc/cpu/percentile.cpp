// entropy_percentile and the k-th smallest value (OHEM's threshold) on the CPU. Percentile: NumPy's default ("linear") percentile of the valid values,
// computed exactly: the needed order statistics by selection (a 16-bit radix histogram, then
// nth_element among the values of the bins that hold the ranks; no sort, no full copy), then
// NumPy's float64 index and interpolation rules, rounded to fp32 at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace ssf {
namespace {

// NumPy (>= 1.22) method "linear": virtual index (n - 1) * q / 100; indexes at or beyond the
// last element take the last element, negative ones the first.
struct Interp {
  int64_t prev, next;
  double gamma;
};

Interp numpy_linear(int64_t n, double q) {
  const double qq = q / 100.0;
  const double virt = (double)(n - 1) * qq;
  Interp r;
  if (virt >= (double)(n - 1)) {
    r.prev = r.next = n - 1;
    r.gamma = virt + 1.0;  // NumPy's gamma after it sets both indexes to -1; irrelevant as a == b
  } else if (virt < 0) {
    r.prev = r.next = 0;
    r.gamma = virt;
  } else {
    const double fl = std::floor(virt);
    r.prev = (int64_t)fl;
    r.next = r.prev + 1;
    r.gamma = virt - fl;
  }
  return r;
}

// NumPy's _lerp: a + (b - a) t, or b - (b - a)(1 - t) when t >= 0.5.
double numpy_lerp(double a, double b, double t) {
  const double diff = b - a;
  return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

}  // namespace

// Order-preserving 32-bit key of a float (-0.0 already mapped to +0.0). Every NaN gets the key
// of the positive quiet NaN, above +inf: NaN sorts last, as in torch.sort.
inline uint32_t float_key(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  if (x != x) b = 0x7fc00000u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

constexpr int kBinBits = 16;  // sign, exponent and 7 mantissa bits: 128 bins per octave
constexpr int kBinShift = 32 - kBinBits;
constexpr int kBins = 1 << kBinBits;

// Pass 1 (parallel): histogram of the valid values' top key bits, NaN flag, count.
struct Histogram {
  std::vector<int64_t> start;  // kBins + 1 prefix sums
  bool has_nan = false;
  int64_t n = 0;
};

Histogram histogram(const float* src, const bool* keep, int64_t total) {
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), (int)(total / 65536) + 1));
  std::vector<std::vector<int32_t>> part(threads, std::vector<int32_t>(kBins, 0));
  std::vector<char> nan(threads, 0);
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t lo = total * t / threads, hi = total * (t + 1) / threads;
      int32_t* h = part[t].data();
      bool any_nan = false;
      if (keep) {
        for (int64_t i = lo; i < hi; ++i) {  // branch-free: invalid entries add 0
          const float x = src[i];
          const int32_t k = keep[i];
          any_nan |= (x != x) & (k != 0);
          h[float_key(x == 0.0f ? 0.0f : x) >> kBinShift] += k;
        }
      } else {
        for (int64_t i = lo; i < hi; ++i) {
          const float x = src[i];
          any_nan |= x != x;
          ++h[float_key(x == 0.0f ? 0.0f : x) >> kBinShift];
        }
      }
      nan[t] = any_nan;
    }
  });
  Histogram hs;
  hs.start.assign(kBins + 1, 0);
  for (int b = 0; b < kBins; ++b) {
    int64_t c = 0;
    for (int t = 0; t < threads; ++t) c += part[t][b];
    hs.start[b + 1] = hs.start[b] + c;
  }
  for (char f : nan) hs.has_nan |= f != 0;
  hs.n = hs.start[kBins];
  return hs;
}

// The values at the given ranks (ascending, unique): each rank lies in one histogram bin; only
// the values of those bins are collected (pass 2), and nth_element runs within each bin.
std::vector<float> values_at_ranks(const float* src, const bool* keep, int64_t total, const Histogram& hs,
                                   const std::vector<int64_t>& ranks) {
  auto bin_of = [&](int64_t r) {
    return (int)(std::upper_bound(hs.start.begin(), hs.start.end(), r) - hs.start.begin()) - 1;
  };
  std::vector<int> group_of_bin(kBins, -1);
  std::vector<int64_t> group_start;  // offset of each bin's values in cand
  int64_t size = 0;
  for (int64_t r : ranks) {
    const int b = bin_of(r);
    if (group_of_bin[b] >= 0) continue;
    group_of_bin[b] = (int)group_start.size();
    group_start.push_back(size);
    size += hs.start[b + 1] - hs.start[b];
  }
  std::vector<float> cand(size);
  std::vector<int64_t> fill = group_start;
  for (int64_t i = 0; i < total; ++i) {
    const float x = src[i] == 0.0f ? 0.0f : src[i];
    const int g = group_of_bin[float_key(x) >> kBinShift];
    if (g >= 0 && (!keep || keep[i])) cand[fill[g]++] = x;  // rarely true: predictable
  }
  std::vector<float> out;
  for (int64_t r : ranks) {
    const int b = bin_of(r);
    const int64_t lo = group_start[group_of_bin[b]], k = r - hs.start[b];
    const int64_t hi = lo + (hs.start[b + 1] - hs.start[b]);
    std::nth_element(cand.begin() + lo, cand.begin() + lo + k, cand.begin() + hi);
    out.push_back(cand[lo + k]);
  }
  return out;
}

at::Tensor percentile_cpu(const at::Tensor& values, const c10::optional<at::Tensor>& valid, at::ArrayRef<double> q) {
  TORCH_CHECK(values.device().is_cpu(), "entropy: expected a CPU tensor");
  TORCH_CHECK(at::isFloatingType(values.scalar_type()), "entropy: expected a floating dtype, got ", values.scalar_type());
  const at::Tensor v = values.to(at::kFloat).contiguous();
  at::Tensor m;
  if (valid.has_value() && valid->defined()) {
    TORCH_CHECK(valid->sizes() == values.sizes(), "valid: expected the shape of entropy ", values.sizes(), ", got ",
                valid->sizes());
    TORCH_CHECK(valid->scalar_type() == at::kBool, "valid: expected a bool tensor, got ", valid->scalar_type());
    m = valid->contiguous();
  }
  for (double qi : q) TORCH_CHECK(qi >= 0.0 && qi <= 100.0, "q: expected percentiles in [0, 100], got ", qi);

  const float* src = v.data_ptr<float>();
  const bool* keep = m.defined() ? m.data_ptr<bool>() : nullptr;
  const int64_t total = v.numel();
  const Histogram hs = histogram(src, keep, total);
  at::Tensor out = at::empty({(int64_t)q.size()}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  if (hs.n == 0 || hs.has_nan) {  // NumPy: NaN in, NaN out; no values: no percentile
    for (size_t i = 0; i < q.size(); ++i) o[i] = std::numeric_limits<float>::quiet_NaN();
    return out;
  }
  std::vector<Interp> it;
  std::vector<int64_t> ranks;
  for (double qi : q) {
    it.push_back(numpy_linear(hs.n, qi));
    ranks.push_back(it.back().prev);
    ranks.push_back(it.back().next);
  }
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  const std::vector<float> value_at = values_at_ranks(src, keep, total, hs, ranks);
  auto lookup = [&](int64_t r) {
    return (double)value_at[std::lower_bound(ranks.begin(), ranks.end(), r) - ranks.begin()];
  };
  for (size_t i = 0; i < q.size(); ++i)
    o[i] = (float)numpy_lerp(lookup(it[i].prev), lookup(it[i].next), it[i].gamma);
  return out;
}

// The value of 0-based rank `rank` among all values in ascending order (NaN last), as a 0-dim fp32
// tensor: the same histogram and in-bin selection, for one rank known on the host.
at::Tensor select_rank_cpu(const at::Tensor& values, int64_t rank) {
  TORCH_CHECK(values.device().is_cpu(), "values: expected a CPU tensor");
  TORCH_CHECK(at::isFloatingType(values.scalar_type()), "values: expected a floating dtype, got ", values.scalar_type());
  TORCH_CHECK(rank >= 0 && rank < values.numel(), "rank: expected in [0, ", values.numel(), "), got ", rank);
  const at::Tensor v = values.to(at::kFloat).contiguous();
  const float* src = v.data_ptr<float>();
  const Histogram hs = histogram(src, nullptr, v.numel());
  return at::full({}, values_at_ranks(src, nullptr, v.numel(), hs, {rank})[0], at::TensorOptions().dtype(at::kFloat));
}

}  // namespace ssf

TORCH_LIBRARY_IMPL(semiseg_fast, CPU, m) {
  m.impl("_cpp_percentile", &ssf::percentile_cpu);
  m.impl("_cpp_select_rank", &ssf::select_rank_cpu);
}
