// Pixel-major rows of (N, D, H, W) feature maps (U2PL's contrastive term reads features by pixel),
// in recycled buffers: a fresh 70 MB tensor costs more in page faults than the copy itself.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "buffer_pool.h"

namespace ssf {
namespace {

void check_features(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "features: expected an (N, D, H, W) CPU tensor, got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "features: expected float32, got ", x.scalar_type());
}

void check_pixels(const at::Tensor& pix, int64_t num_pixels) {
  TORCH_CHECK(pix.scalar_type() == at::kLong, "pixels: expected int64, got ", pix.scalar_type());
  const at::Tensor p = pix.contiguous();
  const int64_t* ip = p.data_ptr<int64_t>();
  for (int64_t i = 0; i < p.numel(); ++i)
    TORCH_CHECK_INDEX(ip[i] >= 0 && ip[i] < num_pixels, "pixels: expected indices in [0, ", num_pixels, "), got ", ip[i]);
}

// (N * H * W, D): row p holds the D features of pixel p (image-major, then row, then column).
at::Tensor feature_rows_cpu(const at::Tensor& x) {
  check_features(x);
  const int64_t N = x.size(0), D = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor out = pooled_empty({N * H * W, D}, at::kFloat);
  if (out.numel() > 0) out.view({N, H, W, D}).copy_(x.permute({0, 2, 3, 1}));
  return out;
}

// (..., D): the features of the pixels at flat indices `pixels` (any shape), any strides of x.
at::Tensor pixel_rows_cpu(const at::Tensor& x, const at::Tensor& pixels) {
  check_features(x);
  const int64_t D = x.size(1), H = x.size(2), W = x.size(3);
  check_pixels(pixels, x.size(0) * H * W);
  std::vector<int64_t> sizes(pixels.sizes().begin(), pixels.sizes().end());
  sizes.push_back(D);
  at::Tensor out = at::empty(sizes, x.options());
  const at::Tensor pix = pixels.contiguous();
  const int64_t* ip = pix.data_ptr<int64_t>();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t sN = x.stride(0), sD = x.stride(1), sH = x.stride(2), sW = x.stride(3);
  at::parallel_for(0, pix.numel(), 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t n = ip[i] / (H * W), r = ip[i] % (H * W);
      const float* src = xp + n * sN + (r / W) * sH + (r % W) * sW;
      for (int64_t d = 0; d < D; ++d) op[i * D + d] = src[d * sD];
    }
  });
  return out;
}

// Backward of pixel_rows: grad_rows summed into a zero map shaped like x (NCHW), the same pixel
// drawn several times adding up. Threads split the channels, so no two write the same element.
at::Tensor pixel_rows_backward_cpu(const at::Tensor& grad_rows, const at::Tensor& pixels, at::IntArrayRef sizes) {
  TORCH_CHECK(sizes.size() == 4, "sizes: expected (N, D, H, W)");
  const int64_t N = sizes[0], D = sizes[1], HW = sizes[2] * sizes[3];
  TORCH_CHECK(grad_rows.scalar_type() == at::kFloat && grad_rows.numel() == pixels.numel() * D,
              "grad_rows: expected float32 rows of ", D, " for each pixel");
  at::Tensor g = pooled_empty(sizes, at::kFloat);
  const at::Tensor gr = grad_rows.contiguous(), pix = pixels.contiguous();
  const int64_t* ip = pix.data_ptr<int64_t>();
  const float* gp = gr.data_ptr<float>();
  float* out = g.data_ptr<float>();
  const int64_t P = pix.numel();
  at::parallel_for(0, D, 1, [&](int64_t d0, int64_t d1) {
    for (int64_t d = d0; d < d1; ++d) {
      for (int64_t n = 0; n < N; ++n) std::fill(out + (n * D + d) * HW, out + (n * D + d + 1) * HW, 0.f);
      for (int64_t i = 0; i < P; ++i) {
        const int64_t n = ip[i] / HW, r = ip[i] % HW;
        out[(n * D + d) * HW + r] += gp[i * D + d];
      }
    }
  });
  return g;
}

}  // namespace
}  // namespace ssf

TORCH_LIBRARY_IMPL(semiseg_fast, CPU, m) {
  m.impl("_cpp_feature_rows", &ssf::feature_rows_cpu);
  m.impl("_cpp_pixel_rows", &ssf::pixel_rows_cpu);
  m.impl("_cpp_pixel_rows_backward", &ssf::pixel_rows_backward_cpu);
}
