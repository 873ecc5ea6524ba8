// CPU implementations of the fused pixel ops, exposed as private operators
// torch.ops.semiseg_fast._cpp_*. The public ops (schemas, autograd, fake tensors, backend
// choice) live in semiseg_fast/ops/; these functions only check what would otherwise
// crash, describe the tensors to the kernels and run them over tiles in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>


#include "../common/codes.h"
#include "../common/types.h"
#include "buffer_pool.h"

namespace ssf {
namespace {

const KernelTable* g_table = nullptr;

// The builds, widest first, with what the CPU must support to run each.
struct Isa {
  const char* name;
  const KernelTable& (*kernels)();
  bool (*supported)();
};

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(_M_X64)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

bool cpu_has_avx512bf16() {
#if defined(__x86_64__) || defined(_M_X64)
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool always() { return true; }

const Isa kIsas[] = {
    {"avx512_bf16", &kernels_avx512bf16, &cpu_has_avx512bf16},
    {"avx512", &kernels_avx512, &cpu_has_avx512},
    {"avx2", &kernels_avx2, &cpu_has_avx2},
    {"generic", &kernels_generic, &always},
};

const char* kIsaNames = "'avx512_bf16', 'avx512', 'avx2', 'generic'";

// The widest build this CPU runs, or the one SEMISEG_FAST_CPU_ISA names (if the CPU runs it).
const KernelTable& table() {
  if (!g_table) {
    const char* env = std::getenv("SEMISEG_FAST_CPU_ISA");
    for (const Isa& isa : kIsas) {
      if (!isa.supported()) continue;
      if (!g_table) g_table = &isa.kernels();
      if (env && std::string(env) == isa.name) {
        g_table = &isa.kernels();
        break;
      }
    }
  }
  return *g_table;
}

}  // namespace

// Selects the instruction set by name; "" only reports the current one.
std::string kernel_isa(const std::string& requested) {
  if (requested.empty()) return table().name;
  for (const Isa& isa : kIsas) {
    if (requested != isa.name) continue;
    TORCH_CHECK(isa.supported(), "kernel_isa: this CPU cannot run the '", requested, "' build");
    g_table = &isa.kernels();
    return table().name;
  }
  TORCH_CHECK(false, "kernel_isa: expected one of ", kIsaNames, " or '', got '", requested, "'");
  return "";
}

// The builds this CPU runs, widest first.
std::vector<std::string> kernel_isas() {
  std::vector<std::string> out;
  for (const Isa& isa : kIsas)
    if (isa.supported()) out.push_back(isa.name);
  return out;
}

namespace {

DType dtype_of(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kDouble: return DType::F64;
    case at::kByte: return DType::U8;
    case at::kChar: return DType::I8;
    case at::kShort: return DType::I16;
    case at::kInt: return DType::I32;
    case at::kLong: return DType::I64;
    case at::kBool: return DType::Bool;
    default: TORCH_CHECK(false, what, ": unsupported dtype ", t.scalar_type());
  }
  return DType::F32;
}

void check_logits(const at::Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu(), what, ": expected a CPU tensor");
  TORCH_CHECK(x.dim() == 4, what, ": expected (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.size(1) >= 2, what, ": expected at least 2 classes, got C=", x.size(1));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), what, ": expected a floating dtype, got ", x.scalar_type());
}

Logits logits_view(const at::Tensor& x) {
  Logits l;
  l.data = x.data_ptr();
  l.dtype = dtype_of(x, "logits");
  l.sN = x.stride(0);
  l.sC = x.stride(1);
  l.sH = x.stride(2);
  l.sW = x.stride(3);
  return l;
}

GradOut grad_view(at::Tensor& g) {
  GradOut o;
  o.data = g.data_ptr();
  o.dtype = dtype_of(g, "grad");
  o.sN = g.stride(0);
  o.sC = g.stride(1);
  o.sH = g.stride(2);
  o.sW = g.stride(3);
  return o;
}

PixelMap map_view(const c10::optional<at::Tensor>& t, const Shape& s, const char* what) {
  PixelMap m;
  if (!t.has_value() || !t->defined()) return m;
  TORCH_CHECK(t->device().is_cpu(), what, ": expected a CPU tensor");
  TORCH_CHECK(t->dim() == 3 && t->size(0) == s.N && t->size(1) == s.H && t->size(2) == s.W, what,
              ": expected shape (", s.N, ", ", s.H, ", ", s.W, "), got ", t->sizes());
  m.data = t->data_ptr();
  m.dtype = dtype_of(*t, what);
  m.sN = t->stride(0);
  m.sH = t->stride(1);
  m.sW = t->stride(2);
  return m;
}

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return pooled_empty(sizes, options.dtype().toScalarType());
}

at::Tensor empty_output_like(const at::Tensor& x) { return pooled_empty_like(x, x.scalar_type()); }

// A loss's gradient, written in forward and kept for backward, is fp32 for fp16/bf16 logits:
// backward multiplies it by the incoming gradient and rounds once (rounding here too would put
// the result one unit in the last place off whenever that gradient is not 1).
at::ScalarType saved_grad_dtype(const at::Tensor& logits) {
  const auto t = logits.scalar_type();
  return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t;
}

at::Tensor saved_grad_buffer(const at::Tensor& logits, bool need_grad) {
  const auto dtype = saved_grad_dtype(logits);
  return need_grad ? pooled_empty_like(logits, dtype) : at::empty({0}, logits.options().dtype(dtype));
}

Shape shape_of(const at::Tensor& x) {
  return Shape{x.size(0), x.size(1), x.size(2), x.size(3)};
}

// Source indices and weights of one axis, in float32 as torch computes them for
// F.interpolate(mode="bilinear") (semiseg_fast/base/resample.py builds the same tables).
void axis_taps(int64_t in, int64_t out, bool align_corners, std::vector<int32_t>& i0, std::vector<int32_t>& i1,
               std::vector<float>& l0, std::vector<float>& l1) {
  i0.resize(out);
  i1.resize(out);
  l0.resize(out);
  l1.resize(out);
  const float scale = align_corners ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.f) : (float)in / (float)out;
  for (int64_t j = 0; j < out; ++j) {
    if (in == out) {
      i0[j] = i1[j] = (int32_t)j;
      l0[j] = 1.f;
      l1[j] = 0.f;
      continue;
    }
    float src = align_corners ? scale * (float)j : scale * ((float)j + 0.5f) - 0.5f;
    if (!align_corners && src < 0.f) src = 0.f;
    const int64_t k = std::min<int64_t>((int64_t)std::floor(src), in - 1);
    const float lambda = std::min(std::max(src - (float)k, 0.f), 1.f);
    i0[j] = (int32_t)k;
    i1[j] = (int32_t)(k + (k < in - 1 ? 1 : 0));
    l0[j] = 1.f - lambda;
    l1[j] = lambda;
  }
}

// The op's output grid: the logits' own, or `size` read through bilinear taps (then `rs()` is set).
class Grid {
 public:
  Grid(const at::Tensor& logits, at::OptionalIntArrayRef size, bool align_corners) : shape_(shape_of(logits)) {
    if (!size.has_value()) return;
    TORCH_CHECK(size->size() == 2 && (*size)[0] > 0 && (*size)[1] > 0, "size: expected (H, W), two positive ints, got ",
                *size);
    const int64_t H = (*size)[0], W = (*size)[1];
    if (H == shape_.H && W == shape_.W) return;
    rs_.h = shape_.H;
    rs_.w = shape_.W;
    axis_taps(rs_.h, H, align_corners, y0_, y1_, ly0_, ly1_);
    axis_taps(rs_.w, W, align_corners, x0_, x1_, lx0_, lx1_);
    rs_.y0 = y0_.data();
    rs_.y1 = y1_.data();
    rs_.ly0 = ly0_.data();
    rs_.ly1 = ly1_.data();
    rs_.x0 = x0_.data();
    rs_.x1 = x1_.data();
    rs_.lx0 = lx0_.data();
    rs_.lx1 = lx1_.data();
    rs_.bands_per_image = (rs_.h + rs_.band_rows - 1) / rs_.band_rows;
    shape_.H = H;
    shape_.W = W;
    active_ = true;
  }
  Grid(const Grid&) = delete;
  const Shape& shape() const { return shape_; }
  const Resample* rs() const { return active_ ? &rs_ : nullptr; }
  Tiling tiling() const { return make_tiling(shape_, rs()); }

 private:
  Shape shape_;
  Resample rs_;
  bool active_ = false;
  std::vector<int32_t> y0_, y1_, x0_, x1_;
  std::vector<float> ly0_, ly1_, lx0_, lx1_;
};

// Runs f over ranges of the tiling's work items (tiles, or source-row bands when resampling).
template <class F>
void run_tiles(int64_t num_items, F&& f) {
  at::parallel_for(0, num_items, 4, [&](int64_t b, int64_t e) { f(b, e); });
}

double sum_in_order(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s;
}

at::Tensor scalar(double v) { return at::full({}, v, at::TensorOptions().dtype(at::kFloat)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_stats_cpu(const at::Tensor& logits, double temperature,
                                                               at::OptionalIntArrayRef size, bool align_corners) {
  check_logits(logits, "logits");
  TORCH_CHECK(temperature > 0, "temperature: expected > 0, got ", temperature);
  const Grid grid(logits, size, align_corners);
  const Shape& S = grid.shape();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor conf = empty_output({S.N, S.H, S.W}, f32);
  at::Tensor label = empty_output({S.N, S.H, S.W}, f32.dtype(S.C <= 255 ? at::kByte : at::kLong));
  at::Tensor ent = empty_output({S.N, S.H, S.W}, f32);
  if (conf.numel() == 0) return {conf, label, ent};
  PixelStatsArgs a;
  a.shape = S;
  a.tiling = grid.tiling();
  a.logits = logits_view(logits);
  a.inv_temperature = (float)(1.0 / temperature);
  a.confidence = conf.data_ptr<float>();
  a.label = label.data_ptr();
  a.label_is_u8 = S.C <= 255;
  a.entropy = ent.data_ptr<float>();
  const auto& k = table();
  run_tiles(a.tiling.num_items, [&](int64_t b, int64_t e) { k.pixel_stats(a, b, e); });
  return {conf, label, ent};
}

at::Tensor pixel_stats_backward_cpu(const at::Tensor& logits, const at::Tensor& confidence, const at::Tensor& label,
                                    const at::Tensor& entropy, const c10::optional<at::Tensor>& grad_conf,
                                    const c10::optional<at::Tensor>& grad_ent, double temperature,
                                    at::OptionalIntArrayRef size, bool align_corners) {
  check_logits(logits, "logits");
  TORCH_CHECK(temperature > 0, "temperature: expected > 0, got ", temperature);
  const Grid grid(logits, size, align_corners);
  const Shape& S = grid.shape();
  PixelStatsBackwardArgs a;
  a.shape = S;
  a.tiling = grid.tiling();
  a.logits = logits_view(logits);
  a.confidence = map_view(confidence, S, "confidence");
  a.label = map_view(label, S, "label");
  a.entropy = map_view(entropy, S, "entropy");
  a.grad_conf = map_view(grad_conf, S, "grad_conf");
  a.grad_ent = map_view(grad_ent, S, "grad_ent");
  a.inv_temperature = (float)(1.0 / temperature);
  at::Tensor grad = empty_output_like(logits);
  a.grad = grad_view(grad);
  if (S.N * S.H * S.W > 0) {
    const auto& k = table();
    run_tiles(a.tiling.num_items, [&](int64_t b, int64_t e) { k.pixel_stats_backward(a, b, e); });
  }
  return grad;
}

at::Tensor negative_mask_cpu(const at::Tensor& logits, int64_t low_rank, int64_t high_rank) {
  check_logits(logits, "logits_or_probs");
  const Shape S = shape_of(logits);
  TORCH_CHECK(low_rank >= 0 && low_rank < S.C && low_rank < high_rank, "negative_class_mask: low_rank=", low_rank,
              ", high_rank=", high_rank, " select nothing for C=", S.C);
  NegativeMaskArgs a;
  a.shape = S;
  a.tiling = make_tiling(S);
  a.logits = logits_view(logits);
  a.low_rank = low_rank;
  a.high_rank = high_rank;
  at::Tensor out = empty_output({S.N, S.C, S.H, S.W}, at::TensorOptions().dtype(at::kBool));
  a.out = reinterpret_cast<uint8_t*>(out.data_ptr<bool>());
  if (S.N * S.H * S.W > 0) {
    const auto& k = table();
    run_tiles(a.tiling.num_tiles, [&](int64_t b, int64_t e) { k.negative_mask(a, b, e); });
  }
  return out;
}

// Denominator of a mean: valid pixels, their summed weight, all pixels, or a given value.
double denominator(const Shape& S, const Tiling& T, const PixelMap& target, const PixelMap& weight,
                   const PixelMap& ignore_mask, int64_t ignore_index, int64_t mode, double value) {
  if (mode == kTotal) return (double)(S.N * S.H * S.W);
  if (mode == kValue) return value;
  if (mode == kValid && !target.data && !ignore_mask.data) return (double)(S.N * S.H * S.W);
  DenominatorArgs d;
  d.shape = S;
  d.tiling = T;
  d.target = target;
  d.ignore_mask = ignore_mask;
  d.ignore_index = ignore_index;
  std::vector<double> valid(T.num_tiles, 0.0), wsum(T.num_tiles, 0.0);
  d.tile_valid = valid.data();
  if (mode == kWeighted) {
    d.weight = weight;
    d.tile_weight = wsum.data();
  }
  const auto& k = table();
  run_tiles(T.num_tiles, [&](int64_t b, int64_t e) { k.denominator(d, b, e); });
  if (mode == kWeighted && weight.data) return sum_in_order(wsum);
  return sum_in_order(valid);
}

// (loss, gradient or an empty tensor, per-pixel ce or an empty tensor).
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_cpu(
    const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
    int64_t ignore_index, int64_t reduction, int64_t norm_mode, double norm_value, bool need_grad, bool need_ce,
    at::OptionalIntArrayRef size, bool align_corners) {
  check_logits(logits, "logits");
  const Grid grid(logits, size, align_corners);
  const Shape& S = grid.shape();
  TORCH_CHECK(!at::isFloatingType(target.scalar_type()) && target.scalar_type() != at::kBool,
              "target: expected an integer dtype, got ", target.scalar_type());
  TORCH_CHECK(reduction >= kNone && reduction <= kSum, "reduction: invalid code ", reduction);
  TORCH_CHECK(norm_mode >= kValid && norm_mode <= kValue, "normalizer: invalid code ", norm_mode);
  CrossEntropyArgs a;
  a.shape = S;
  a.tiling = grid.tiling();
  a.logits = logits_view(logits);
  a.target = map_view(target, S, "target");
  a.weight = map_view(weight, S, "weight");
  a.ignore_index = ignore_index;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  double inv = 1.0;
  if (reduction == kMean) {
    const double d = denominator(S, a.tiling, a.target, a.weight, PixelMap{}, ignore_index, norm_mode, norm_value);
    inv = d != 0.0 ? 1.0 / d : 0.0;
  }
  a.grad_scale = (float)inv;
  at::Tensor grad = saved_grad_buffer(logits, need_grad);
  if (need_grad) a.grad = grad_view(grad);
  at::Tensor loss_pixel = reduction == kNone ? empty_output({S.N, S.H, S.W}, f32) : at::Tensor();
  at::Tensor ce = need_ce ? empty_output({S.N, S.H, S.W}, f32) : at::empty({0}, f32);
  if (loss_pixel.defined()) a.loss_pixel = loss_pixel.data_ptr<float>();
  if (need_ce) a.ce_pixel = ce.data_ptr<float>();
  std::vector<double> tile_loss(a.tiling.num_tiles, 0.0);
  a.tile_loss = tile_loss.data();
  BadTarget bad;
  a.bad = &bad;
  if (S.N * S.H * S.W > 0) {
    const auto& k = table();
    run_tiles(a.tiling.num_items, [&](int64_t b, int64_t e) { k.cross_entropy(a, b, e); });
  }
  TORCH_CHECK_INDEX(!bad.found, "target: expected class indices in [0, ", S.C, ") or ignore_index=", ignore_index,
                    ", got ", bad.value, " at (n=", bad.n, ", h=", bad.h, ", w=", bad.w, ")");
  at::Tensor loss = reduction == kNone ? loss_pixel : scalar(sum_in_order(tile_loss) * inv);
  return {loss, grad, ce};
}

// The mean of a masked per-pixel loss, shared by fixmatch and pseudoseg: the denominator counts
// valid pixels, all pixels, a given value, or (kConfident) the pixels that pass the threshold, known
// only after the kernel: then the gradient is written unscaled and its scale is returned as `post`.
struct MaskedMean {
  double valid = 0.0;  // non-ignored pixels
  double inv = 1.0;    // 1 / denominator when known before the kernel (scales the gradient), else 1
};

MaskedMean masked_mean(const Shape& S, const Tiling& T, const PixelMap& ignore_mask, int64_t ignore_index,
                       int64_t norm_mode, double norm_value) {
  TORCH_CHECK(norm_mode == kValid || norm_mode == kTotal || norm_mode == kValue || norm_mode == kConfident,
              "normalizer: invalid code ", norm_mode);
  MaskedMean r;
  r.valid = denominator(S, T, PixelMap{}, PixelMap{}, ignore_mask, ignore_index, kValid, 0.0);
  if (norm_mode != kConfident) {
    const double d = norm_mode == kValid ? r.valid : norm_mode == kTotal ? (double)(S.N * S.H * S.W) : norm_value;
    r.inv = d != 0.0 ? 1.0 / d : 0.0;
  }
  return r;
}

// Runs a masked-mean loss kernel (fixmatch, pseudoseg) over every tile of `a` and returns
// (loss, mask ratio, gradient or an empty tensor, scale still owed by the gradient).
template <class Args>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_masked_mean(
    Args& a, void (*kernel)(const Args&, int64_t, int64_t), const at::Tensor& student, int64_t ignore_index,
    int64_t norm_mode, double norm_value, bool need_grad) {
  const Shape& S = a.shape;
  MaskedMean mean = masked_mean(S, a.tiling, a.ignore_mask, ignore_index, norm_mode, norm_value);
  a.grad_scale = (float)mean.inv;
  at::Tensor grad = saved_grad_buffer(student, need_grad);
  if (need_grad) a.grad = grad_view(grad);
  std::vector<double> tile_loss(a.tiling.num_tiles, 0.0);
  std::vector<int64_t> tile_conf(a.tiling.num_tiles, 0);
  a.tile_loss = tile_loss.data();
  a.tile_confident = tile_conf.data();
  if (S.N * S.H * S.W > 0) run_tiles(a.tiling.num_items, [&](int64_t b, int64_t e) { kernel(a, b, e); });
  int64_t confident = 0;
  for (int64_t c : tile_conf) confident += c;
  double post = 1.0;
  if (norm_mode == kConfident) {
    mean.inv = confident > 0 ? 1.0 / (double)confident : 0.0;
    post = mean.inv;
  }
  const double loss = sum_in_order(tile_loss) * mean.inv;
  const double ratio = mean.valid > 0 ? (double)confident / mean.valid : 0.0;
  return {scalar(loss), scalar(ratio), grad, scalar(post)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fixmatch_cpu(
    const at::Tensor& student, const at::Tensor& teacher, double threshold,
    const c10::optional<at::Tensor>& ignore_mask, int64_t ignore_index, int64_t norm_mode, double norm_value,
    bool need_grad, at::OptionalIntArrayRef size, bool align_corners) {
  check_logits(student, "student_logits");
  check_logits(teacher, "teacher_logits");
  TORCH_CHECK(student.sizes() == teacher.sizes(), "teacher_logits: expected the shape of student_logits ",
              student.sizes(), ", got ", teacher.sizes());
  const Grid grid(student, size, align_corners);
  const Shape& S = grid.shape();
  FixMatchArgs a;
  a.shape = S;
  a.tiling = grid.tiling();
  a.student = logits_view(student);
  a.teacher = logits_view(teacher);
  a.ignore_mask = map_view(ignore_mask, S, "ignore_mask");
  a.ignore_index = ignore_index;
  a.threshold = (float)threshold;
  return run_masked_mean(a, table().fixmatch, student, ignore_index, norm_mode, norm_value, need_grad);
}

// Cross pseudo-supervision of logits a and b: (loss, mask ratio, gradient of a, gradient of b (empty
// tensors when not wanted), the scale each gradient still owes). Term k's denominator is the
// normalizer's, or with kConfident the pixels that term trained on; the mask ratio is both terms'
// trained pixels over twice the valid ones.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cps_cpu(
    const at::Tensor& logits_a, const at::Tensor& logits_b, const c10::optional<at::Tensor>& ignore_mask,
    int64_t ignore_index, double threshold, int64_t norm_mode, double norm_value,
    const c10::optional<at::Tensor>& label_a, const c10::optional<at::Tensor>& conf_a,
    const c10::optional<at::Tensor>& label_b, const c10::optional<at::Tensor>& conf_b, bool need_grad_a,
    bool need_grad_b, at::OptionalIntArrayRef size, bool align_corners) {
  check_logits(logits_a, "logits_a");
  check_logits(logits_b, "logits_b");
  TORCH_CHECK(logits_a.sizes() == logits_b.sizes(), "logits_b: expected the shape of logits_a ", logits_a.sizes(),
              ", got ", logits_b.sizes());
  const Grid grid(logits_a, size, align_corners);
  const Shape& S = grid.shape();
  const char* names[2][2] = {{"targets_a label", "targets_a confidence"}, {"targets_b label", "targets_b confidence"}};
  const c10::optional<at::Tensor>* maps[2][2] = {{&label_a, &conf_a}, {&label_b, &conf_b}};
  CpsArgs a;
  a.shape = S;
  a.tiling = grid.tiling();
  a.logits[0] = logits_view(logits_a);
  a.logits[1] = logits_view(logits_b);
  a.ignore_mask = map_view(ignore_mask, S, "ignore_mask");
  a.ignore_index = ignore_index;
  a.threshold = (float)threshold;
  BadTarget bad[2];
  for (int k = 0; k < 2; ++k) {
    TORCH_CHECK(maps[k][0]->has_value() == maps[k][1]->has_value(), names[k][0],
                ": expected a label map and a confidence map together");
    a.label[k] = map_view(*maps[k][0], S, names[k][0]);
    a.confidence[k] = map_view(*maps[k][1], S, names[k][1]);
    a.bad[k] = &bad[k];
  }
  MaskedMean mean = masked_mean(S, a.tiling, a.ignore_mask, ignore_index, norm_mode, norm_value);
  a.grad_scale = (float)mean.inv;
  const at::Tensor* inputs[2] = {&logits_a, &logits_b};
  const bool need[2] = {need_grad_a, need_grad_b};
  at::Tensor grads[2];
  std::vector<double> tile_loss[2];
  std::vector<int64_t> tile_count[2];
  for (int k = 0; k < 2; ++k) {
    grads[k] = saved_grad_buffer(*inputs[k], need[k]);
    if (need[k]) a.grad[k] = grad_view(grads[k]);
    tile_loss[k].assign(a.tiling.num_tiles, 0.0);
    tile_count[k].assign(a.tiling.num_tiles, 0);
    a.tile_loss[k] = tile_loss[k].data();
    a.tile_count[k] = tile_count[k].data();
  }
  if (S.N * S.H * S.W > 0) {
    const auto& k = table();
    run_tiles(a.tiling.num_items, [&](int64_t b, int64_t e) { k.cps(a, b, e); });
  }
  for (int k = 0; k < 2; ++k)
    TORCH_CHECK_INDEX(!bad[k].found, names[k][0], ": expected class indices in [0, ", S.C, ") or ignore_index=",
                      ignore_index, ", got ", bad[k].value, " at (n=", bad[k].n, ", h=", bad[k].h, ", w=", bad[k].w,
                      ")");
  double loss = 0.0, trained = 0.0, post[2] = {1.0, 1.0};
  for (int k = 0; k < 2; ++k) {
    int64_t count = 0;
    for (int64_t c : tile_count[k]) count += c;
    double inv = mean.inv;
    if (norm_mode == kConfident) inv = post[k] = count > 0 ? 1.0 / (double)count : 0.0;
    loss += sum_in_order(tile_loss[k]) * inv;
    trained += (double)count;
  }
  const double ratio = mean.valid > 0 ? trained / (2.0 * mean.valid) : 0.0;
  return {scalar(loss), scalar(ratio), grads[0], grads[1], scalar(post[0]), scalar(post[1])};
}

// Monodepth2's photometric loss of target (N, 3, H, W) against S warped sources (S, N, 3, H, W)
// and optionally S identity ones: (loss, winner (N, H, W) int8, the gradient of warped in fp32
// (empty when not wanted)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> photometric_cpu(const at::Tensor& target, const at::Tensor& warped,
                                                                const c10::optional<at::Tensor>& identity,
                                                                double ssim_weight, bool need_grad) {
  TORCH_CHECK(target.dim() == 4 && target.size(1) == 3, "target: expected (N, 3, H, W), got ", target.sizes());
  TORCH_CHECK(warped.dim() == 5 && warped.sizes().slice(1) == target.sizes(),
              "warped: expected (S, N, 3, H, W) with target's (N, 3, H, W) ", target.sizes(), ", got ", warped.sizes());
  TORCH_CHECK(target.size(2) >= 2 && target.size(3) >= 2, "target: expected at least 2 x 2 pixels, got ",
              target.sizes());
  if (identity.has_value())
    TORCH_CHECK(identity->sizes() == warped.sizes(), "identity: expected warped's shape ", warped.sizes(), ", got ",
                identity->sizes());
  const at::Tensor t = target.to(at::kFloat).contiguous(), w = warped.to(at::kFloat).contiguous();
  const at::Tensor id = identity.has_value() ? identity->to(at::kFloat).contiguous() : at::Tensor();
  PhotometricArgs a;
  a.S = w.size(0), a.N = t.size(0), a.H = t.size(2), a.W = t.size(3);
  a.target = t.data_ptr<float>();
  a.warped = w.data_ptr<float>();
  a.identity = id.defined() ? id.data_ptr<float>() : nullptr;
  a.alpha = (float)ssim_weight;
  const int64_t pixels = a.N * a.H * a.W;
  a.grad_scale = pixels > 0 ? 1.f / (float)pixels : 0.f;
  at::Tensor grad = at::empty(need_grad ? w.sizes() : at::IntArrayRef{0}, w.options());  // every element written
  if (need_grad) a.grad = grad.data_ptr<float>();
  at::Tensor winner = at::empty({a.N, a.H, a.W}, t.options().dtype(at::kChar));
  a.winner = winner.data_ptr<int8_t>();
  std::vector<double> image_loss(a.N, 0.0);
  a.image_loss = image_loss.data();
  if (a.S > 0 && pixels > 0) {
    const auto& k = table();
    run_tiles(a.N, [&](int64_t b, int64_t e) { k.photometric(a, b, e); });
  }
  return {scalar(pixels > 0 ? sum_in_order(image_loss) / (double)pixels : 0.0), winner, grad};
}

double sum_of_squares(const at::Tensor& x, const Grid& grid) {
  SumSquaresArgs a;
  a.shape = grid.shape();
  a.tiling = grid.tiling();
  a.x = logits_view(x);
  std::vector<double> tile_sum(a.tiling.num_tiles, 0.0);
  a.tile_sum = tile_sum.data();
  const auto& k = table();
  run_tiles(a.tiling.num_items, [&](int64_t b, int64_t e) { k.sum_squares(a, b, e); });
  return sum_in_order(tile_sum);
}

// PseudoSeg's global logit scale s = 1 / sqrt(mean over p and m of v^2 + 1e-8), as a 0-dim tensor.
// With `size`, over the values of both resampled to it.
at::Tensor pseudoseg_scale_cpu(const at::Tensor& decoder, const at::Tensor& sgc, at::OptionalIntArrayRef size,
                               bool align_corners) {
  check_logits(decoder, "decoder_logits");
  check_logits(sgc, "sgc_logits");
  TORCH_CHECK(decoder.sizes() == sgc.sizes(), "sgc_logits: expected the shape of decoder_logits ", decoder.sizes(),
              ", got ", sgc.sizes());
  const Grid grid(decoder, size, align_corners);
  const Shape& S = grid.shape();
  const double count = 2.0 * (double)(S.N * S.C * S.H * S.W);
  const double mean = count > 0 ? (sum_of_squares(decoder, grid) + sum_of_squares(sgc, grid)) / count : 0.0;
  return scalar(1.0 / std::sqrt(mean + 1e-8));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pseudoseg_cpu(
    const at::Tensor& student, const at::Tensor& decoder, const at::Tensor& sgc,
    const c10::optional<at::Tensor>& ignore_mask, const at::Tensor& scale, double gamma, double temperature,
    double threshold, bool soft, int64_t norm_mode, double norm_value, bool need_grad, at::OptionalIntArrayRef size,
    bool align_corners) {
  check_logits(student, "student_logits");
  check_logits(decoder, "decoder_logits");
  check_logits(sgc, "sgc_logits");
  TORCH_CHECK(student.sizes() == decoder.sizes() && student.sizes() == sgc.sizes(),
              "decoder_logits, sgc_logits: expected the shape of student_logits ", student.sizes(), ", got ",
              decoder.sizes(), " and ", sgc.sizes());
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == at::kFloat, "scale: expected one float32 value");
  TORCH_CHECK(temperature > 0, "temperature: expected > 0, got ", temperature);
  const Grid grid(student, size, align_corners);
  const Shape& S = grid.shape();
  PseudoSegArgs a;
  a.shape = S;
  a.tiling = grid.tiling();
  a.student = logits_view(student);
  a.decoder = logits_view(decoder);
  a.sgc = logits_view(sgc);
  a.ignore_mask = map_view(ignore_mask, S, "ignore_mask");
  a.scale = scale.item<float>();
  a.gamma = (float)gamma;
  a.inv_temperature = (float)(1.0 / temperature);
  a.threshold = (float)threshold;
  a.soft = soft;
  return run_masked_mean(a, table().pseudoseg, student, 255, norm_mode, norm_value, need_grad);
}

// grad * scale written as `dtype` into a recycled buffer, in one pass: the product is taken in
// fp32 (or fp64) and rounded once. `scale` is a 0-dim tensor or a per-pixel (N, 1, H, W) one.
at::Tensor scaled_grad_cpu(const at::Tensor& grad, const at::Tensor& scale, at::ScalarType dtype) {
  at::Tensor out = pooled_empty_like(grad, dtype);
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
  // The usual case, a scalar times a dense fp32 gradient into fp16/bf16, in our vector kernel:
  // ATen's mixed-dtype multiply runs it at a few times the cost of this pass.
  if (half && grad.scalar_type() == at::kFloat && scale.dim() == 0 && grad.is_non_overlapping_and_dense() &&
      out.strides() == grad.strides()) {
    ScaleRoundArgs a;
    a.grad = grad.data_ptr<float>();
    a.out = out.data_ptr();
    a.dtype = dtype == at::kHalf ? DType::F16 : DType::BF16;
    a.scale = scale.item<float>();
    const auto& k = table();
    at::parallel_for(0, grad.numel(), int64_t(1) << 16, [&](int64_t b, int64_t e) { k.scale_round(a, b, e); });
    return out;
  }
  return at::mul_out(out, grad, scale);
}

// (loss, d loss / d anchors or an empty tensor): see InfoNceArgs. Shapes are checked by the op.
std::tuple<at::Tensor, at::Tensor> infonce_cpu(const at::Tensor& anchors, const at::Tensor& positive,
                                               const at::Tensor& keys, const at::Tensor& rows, const at::Tensor& weight,
                                               double temperature, bool need_grad) {
  TORCH_CHECK(anchors.dim() == 3 && anchors.scalar_type() == at::kFloat, "anchors: expected (K, Q, D) float32");
  const int64_t K = anchors.size(0), Q = anchors.size(1), D = anchors.size(2);
  TORCH_CHECK(rows.dim() == 3 && rows.size(0) == K && rows.size(1) == Q && rows.scalar_type() == at::kLong,
              "rows: expected (K, Q, M) int64");
  TORCH_CHECK(positive.sizes() == at::IntArrayRef({K, D}) && positive.scalar_type() == at::kFloat,
              "positive: expected (K, D) float32");
  TORCH_CHECK(keys.dim() == 2 && keys.size(1) == D && keys.scalar_type() == at::kFloat, "keys: expected (R, D) float32");
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({K}) && weight.scalar_type() == at::kFloat, "weight: expected (K,) float32");
  TORCH_CHECK(temperature > 0, "temperature: expected > 0, got ", temperature);
  const at::Tensor x = anchors.contiguous(), p = positive.contiguous(), kt = keys.contiguous(), r = rows.contiguous(),
                   w = weight.contiguous();
  InfoNceArgs a;
  a.K = K;
  a.Q = Q;
  a.M = rows.size(2);
  a.D = D;
  a.anchors = x.data_ptr<float>();
  a.positive = p.data_ptr<float>();
  a.keys = kt.data_ptr<float>();
  a.rows = r.data_ptr<int64_t>();
  a.weight = w.data_ptr<float>();
  a.inv_temperature = (float)(1.0 / temperature);
  at::Tensor per_anchor = at::empty({K * Q}, anchors.options());
  at::Tensor grad = need_grad ? at::empty({K, Q, D}, anchors.options()) : at::empty({0}, anchors.options());
  a.loss = per_anchor.data_ptr<float>();
  a.grad = need_grad ? grad.data_ptr<float>() : nullptr;
  if (K * Q > 0) {
    // Rows out of range would read outside the key table: checked here, where reading them is free.
    const int64_t R = kt.size(0);
    const int64_t* rp = a.rows;
    for (int64_t i = 0; i < r.numel(); ++i)
      TORCH_CHECK_INDEX(rp[i] >= 0 && rp[i] < R, "rows: expected indices in [0, ", R, "), got ", rp[i]);
    const auto& k = table();
    at::parallel_for(0, K * Q, 16, [&](int64_t b, int64_t e) { k.infonce(a, b, e); });
  }
  const float* lp = a.loss;
  double total = 0.0;
  for (int64_t i = 0; i < K * Q; ++i) total += lp[i];
  return {scalar(total), grad};
}

}  // namespace
}  // namespace ssf

TORCH_LIBRARY_IMPL(semiseg_fast, CPU, m) {
  m.impl("_cpp_infonce", &ssf::infonce_cpu);
  m.impl("_cpp_pixel_stats", &ssf::pixel_stats_cpu);
  m.impl("_cpp_pixel_stats_backward", &ssf::pixel_stats_backward_cpu);
  m.impl("_cpp_negative_mask", &ssf::negative_mask_cpu);
  m.impl("_cpp_scaled_grad", &ssf::scaled_grad_cpu);
  m.impl("_cpp_cross_entropy", &ssf::cross_entropy_cpu);
  m.impl("_cpp_fixmatch", &ssf::fixmatch_cpu);
  m.impl("_cpp_cps", &ssf::cps_cpu);
  m.impl("_cpp_photometric", &ssf::photometric_cpu);
  m.impl("_cpp_pseudoseg_scale", &ssf::pseudoseg_scale_cpu);
  m.impl("_cpp_pseudoseg", &ssf::pseudoseg_cpu);
}
