// U2PL's memory-bank push: for each class, the newest (last in row-major order) pixels that are
// negatives for it, found by scanning the pixels backwards, without (pixels, classes) masks or a
// top-k over all pixels. Negative for class k (rank_k: the position of k among the pixel's
// probabilities, largest first, ties by class index):
//   labeled image:   rank_k < low_rank and k != label;   unlabeled: low_rank <= rank_k < high_rank;
//   the pixel unreliable, and prob_k < threshold; with `quirks` (the official code) only k == label.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace ssf {
namespace {

std::tuple<at::Tensor, at::Tensor> newest_negatives_cpu(const at::Tensor& prob, const at::Tensor& label,
                                                        const at::Tensor& unreliable, const at::Tensor& labeled,
                                                        int64_t low_rank, int64_t high_rank, double threshold,
                                                        int64_t limit, bool quirks) {
  TORCH_CHECK(prob.device().is_cpu() && prob.dim() == 4 && prob.scalar_type() == at::kFloat,
              "prob: expected a (B, C, h, w) float32 CPU tensor, got ", prob.sizes(), " ", prob.scalar_type());
  const int64_t B = prob.size(0), C = prob.size(1), HW = prob.size(2) * prob.size(3), P = B * HW;
  TORCH_CHECK(label.numel() == P && label.scalar_type() == at::kLong, "label: expected ", P, " int64 values");
  TORCH_CHECK(unreliable.numel() == P && unreliable.scalar_type() == at::kBool, "unreliable: expected ", P,
              " bool values");
  TORCH_CHECK(labeled.numel() == B && labeled.scalar_type() == at::kBool, "labeled: expected ", B, " bool values");
  TORCH_CHECK(limit >= 1, "limit: expected >= 1, got ", limit);
  const at::Tensor x = prob.contiguous(), lab = label.contiguous(), unrel = unreliable.contiguous(),
                   lbl = labeled.contiguous();
  at::Tensor index = at::full({C, limit}, std::max<int64_t>(P - 1, 0), at::kLong);
  at::Tensor counts = at::zeros({C}, at::kLong);
  const float* xp = x.data_ptr<float>();
  const int64_t* lp = lab.data_ptr<int64_t>();
  const bool* up = unrel.data_ptr<bool>();
  const bool* bp = lbl.data_ptr<bool>();
  int64_t* ip = index.data_ptr<int64_t>();
  int64_t* cp = counts.data_ptr<int64_t>();
  const float thr = (float)threshold;
  at::parallel_for(0, C, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      int64_t* out = ip + k * limit;
      int64_t found = 0;
      for (int64_t i = P - 1; i >= 0 && found < limit; --i) {
        if (!up[i]) continue;
        const int64_t b = i / HW, r = i % HW;
        const float* px = xp + b * C * HW + r;
        const float xk = px[k * HW];
        if (!(xk < thr)) continue;
        const bool own = lp[i] == k;
        if (bp[b] && own) continue;   // a labeled pixel is never a negative for its own class
        if (quirks && !own) continue;  // official code: unlabeled pixels, their own pseudo-label only
        int64_t rank = 0;
        for (int64_t j = 0; j < C; ++j) rank += (px[j * HW] > xk) | ((px[j * HW] == xk) & (j < k));
        const bool ok = bp[b] ? rank < low_rank : (rank >= low_rank && rank < high_rank);
        if (ok) out[limit - 1 - found++] = i;
      }
      // oldest first, at the front
      std::copy(out + limit - found, out + limit, out);
      std::fill(out + found, out + limit, std::max<int64_t>(P - 1, 0));
      cp[k] = found;
    }
  });
  return {index, counts};
}

}  // namespace
}  // namespace ssf

TORCH_LIBRARY_IMPL(semiseg_fast, CPU, m) { m.impl("_cpp_newest_negatives", &ssf::newest_negatives_cpu); }
