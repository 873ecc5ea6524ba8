// entropy_percentile on the CPU: NumPy's default ("linear") percentile of the valid values,
// computed exactly: the needed order statistics by selection (std::nth_element, O(n) each,
// no sort), then NumPy's float64 index and interpolation rules, rounded to fp32 at the end.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
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
  std::vector<float> a;
  a.reserve(keep ? 0 : total);
  bool has_nan = false;
  for (int64_t i = 0; i < total; ++i) {
    if (keep && !keep[i]) continue;
    const float x = src[i];
    if (std::isnan(x)) has_nan = true;
    a.push_back(x == 0.0f ? 0.0f : x);  // -0.0 and +0.0 are one value; keep the result's sign canonical
  }
  at::Tensor out = at::empty({(int64_t)q.size()}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const int64_t n = (int64_t)a.size();
  if (n == 0 || has_nan) {  // NumPy: NaN in, NaN out; no values: no percentile
    for (size_t i = 0; i < q.size(); ++i) o[i] = std::numeric_limits<float>::quiet_NaN();
    return out;
  }
  std::vector<Interp> it;
  std::vector<int64_t> ranks;
  for (double qi : q) {
    it.push_back(numpy_linear(n, qi));
    ranks.push_back(it.back().prev);
    ranks.push_back(it.back().next);
  }
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  // Successive selections on the shrinking right part: each rank costs O(remaining n).
  int64_t lo = 0;
  std::vector<float> value_at(ranks.size());
  for (size_t i = 0; i < ranks.size(); ++i) {
    std::nth_element(a.begin() + lo, a.begin() + ranks[i], a.end());
    value_at[i] = a[ranks[i]];
    lo = ranks[i] + 1;
  }
  auto lookup = [&](int64_t r) {
    return (double)value_at[std::lower_bound(ranks.begin(), ranks.end(), r) - ranks.begin()];
  };
  for (size_t i = 0; i < q.size(); ++i)
    o[i] = (float)numpy_lerp(lookup(it[i].prev), lookup(it[i].next), it[i].gamma);
  return out;
}

}  // namespace ssf

TORCH_LIBRARY_IMPL(semiseg_fast, CPU, m) { m.impl("_cpp_percentile", &ssf::percentile_cpu); }
