// Plain descriptions of the tensors a kernel reads and writes. No torch types here: the
// kernels are compiled once per instruction set and must not depend on ATen headers.
#pragma once

#include <atomic>
#include <cstdint>

namespace ssf {

enum class DType : int { F32, F16, BF16, F64, U8, I8, I16, I32, I64, Bool };

// A (N, C, H, W) tensor with arbitrary strides (in elements).
struct Logits {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t sN = 0, sC = 0, sH = 0, sW = 0;
};

// A writable (N, C, H, W) tensor (the gradient).
struct GradOut {
  void* data = nullptr;
  DType dtype = DType::F32;
  int64_t sN = 0, sC = 0, sH = 0, sW = 0;
};

// A (N, H, W) per-pixel map: target, weight or ignore mask. data == nullptr means absent.
struct PixelMap {
  const void* data = nullptr;
  DType dtype = DType::I64;
  int64_t sN = 0, sH = 0, sW = 0;
};

struct Shape {
  int64_t N = 0, C = 0, H = 0, W = 0;
  int64_t hw() const { return H * W; }
};

// Bilinear resampling of (h, w) logits to the op's (H, W) grid, as F.interpolate does it: output
// row Y reads source rows y0[Y] (weight ly0[Y]) and y1[Y] (weight ly1[Y]), output column X source
// columns x0[X] and x1[X] (semiseg_fast/base/resample.py computes the same tables).
struct Resample {
  int64_t h = 0, w = 0;  // the logits' own size
  const int32_t *y0 = nullptr, *y1 = nullptr, *x0 = nullptr, *x1 = nullptr;
  const float *ly0 = nullptr, *ly1 = nullptr, *lx0 = nullptr, *lx1 = nullptr;
  // Work is split into bands of `band_rows` source rows. The thread of a band computes every output
  // row that reads them and alone writes their gradient, so backward needs no atomics and sums
  // each gradient element in the same order whatever the number of threads.
  int64_t band_rows = 16;
  int64_t bands_per_image = 0;
};

// Pixels are processed in tiles of `P` consecutive (h, w) positions of one image; when the op
// resamples (rs set), tiles are segments of one output row and the work items are source-row bands.
struct Tiling {
  int64_t P = 0;               // pixels per tile (multiple of 16, the widest vector)
  int64_t tiles_per_row = 0;   // 0: tiles run across rows
  int64_t tiles_per_image = 0;
  int64_t num_tiles = 0;
  int64_t num_items = 0;       // what the parallel loop splits: tiles, or bands when resampling
  const Resample* rs = nullptr;
};

inline Tiling make_tiling(const Shape& s, const Resample* rs = nullptr, int64_t budget_floats = 4096) {
  Tiling t;
  int64_t p = budget_floats / (s.C > 0 ? s.C : 1);
  p = (p / 16) * 16;
  if (p < 16) p = 16;
  if (p > 512) p = 512;
  const int64_t hw = rs ? s.W : s.hw();
  // Small images (rows): do not pad a tile far beyond them.
  const int64_t hw_pad = ((hw + 15) / 16) * 16;
  if (p > hw_pad) p = hw_pad > 0 ? hw_pad : 16;
  t.P = p;
  if (rs) {
    t.tiles_per_row = (s.W + p - 1) / p;
    t.tiles_per_image = s.H * t.tiles_per_row;
    t.num_items = s.N * rs->bands_per_image;
    t.rs = rs;
  } else {
    t.tiles_per_image = (hw + p - 1) / p;
  }
  t.num_tiles = t.tiles_per_image * s.N;
  if (!rs) t.num_items = t.num_tiles;
  return t;
}

// Reports the first out-of-range target seen by any thread.
struct BadTarget {
  std::atomic<bool> claimed{false};
  bool found = false;  // written only by the thread that claimed the report
  int64_t value = 0;
  int64_t n = 0, h = 0, w = 0;
};

struct PixelStatsArgs {
  Shape shape;
  Tiling tiling;
  Logits logits;
  float inv_temperature = 1.f;
  float* confidence = nullptr;  // (N, H, W) contiguous
  void* label = nullptr;        // (N, H, W) contiguous, uint8 or int64
  bool label_is_u8 = true;
  float* entropy = nullptr;     // (N, H, W) contiguous
};

struct CrossEntropyArgs {
  Shape shape;
  Tiling tiling;
  Logits logits;
  PixelMap target;
  PixelMap weight;              // optional
  int64_t ignore_index = 255;
  float grad_scale = 1.f;       // multiplies every gradient entry (the mean's 1/denominator)
  GradOut grad;                 // data == nullptr: no gradient wanted
  float* loss_pixel = nullptr;  // optional (N, H, W): weight * ce, 0 where ignored
  float* ce_pixel = nullptr;    // optional (N, H, W): unweighted ce, 0 where ignored
  double* tile_loss = nullptr;  // [num_tiles]: sum of weight * ce per tile
  BadTarget* bad = nullptr;     // first out-of-range target; must not be null
};

struct FixMatchArgs {
  Shape shape;
  Tiling tiling;
  Logits student;
  Logits teacher;
  PixelMap ignore_mask;         // optional
  int64_t ignore_index = 255;
  float threshold = 0.95f;
  float grad_scale = 1.f;
  GradOut grad;
  double* tile_loss = nullptr;  // [num_tiles]
  int64_t* tile_confident = nullptr;  // [num_tiles]: confident and not ignored
};

// Cross pseudo-supervision: each network's cross-entropy against the other's pseudo-labels, one
// pass over both logits tensors. Term k (k = 0: network a, 1: b) trains logits[k] on the peer's
// targets: its argmax and confidence, or the given maps (targets of network a train b).
struct CpsArgs {
  Shape shape;
  Tiling tiling;
  Logits logits[2];
  PixelMap label[2], confidence[2];  // targets network k provides; absent: from logits[k]
  PixelMap ignore_mask;               // optional
  int64_t ignore_index = 255;
  float threshold = 0.f;              // > 0: the peer's confidence must reach it
  float grad_scale = 1.f;
  GradOut grad[2];                    // data == nullptr: no gradient for that network
  double* tile_loss[2] = {nullptr, nullptr};       // [num_tiles] each
  int64_t* tile_count[2] = {nullptr, nullptr};     // [num_tiles]: pixels term k trains on
  BadTarget* bad[2] = {nullptr, nullptr};          // a given label outside [0, C) and not ignore_index
};

// Backward of pixel_stats: d/dx of sum(g_conf * confidence + g_ent * entropy).
struct PixelStatsBackwardArgs {
  Shape shape;
  Tiling tiling;
  Logits logits;
  PixelMap confidence;   // fp32 (N, H, W) from the forward
  PixelMap label;        // argmax from the forward
  PixelMap entropy;      // fp32 (N, H, W) from the forward
  PixelMap grad_conf;    // optional
  PixelMap grad_ent;     // optional
  float inv_temperature = 1.f;
  GradOut grad;
};

// Classes whose rank by value (0 = largest, ties broken by class index) is in [low, high).
struct NegativeMaskArgs {
  Shape shape;
  Tiling tiling;
  Logits logits;
  int64_t low_rank = 0, high_rank = 0;
  uint8_t* out = nullptr;  // (N, C, H, W) contiguous bool
};

// Per-tile partial counts used for the mean's denominator.
struct DenominatorArgs {
  Shape shape;
  Tiling tiling;
  PixelMap target;       // cross-entropy: valid = target != ignore_index
  PixelMap weight;       // optional, summed over valid pixels
  PixelMap ignore_mask;  // fixmatch: valid = mask says "not ignored"
  int64_t ignore_index = 255;
  double* tile_valid = nullptr;
  double* tile_weight = nullptr;
};

// Sum of x^2 over every element, per tile (PseudoSeg's global logit scale).
struct SumSquaresArgs {
  Shape shape;
  Tiling tiling;
  Logits x;
  double* tile_sum = nullptr;  // [num_tiles]
};

// PseudoSeg's consistency loss: target = sharpen(gamma softmax(s p) + (1 - gamma) softmax(s m), T),
// soft (or hard, argmax) cross-entropy of the student against it where the pixel is valid and
// max target >= threshold.
struct PseudoSegArgs {
  Shape shape;
  Tiling tiling;
  Logits student;
  Logits decoder;
  Logits sgc;
  PixelMap ignore_mask;         // optional, bool: true = ignored
  float scale = 1.f;            // s, the global logit scale
  float gamma = 0.5f;
  float inv_temperature = 2.f;  // 1 / T
  float threshold = 0.f;
  bool soft = true;
  float grad_scale = 1.f;
  GradOut grad;
  double* tile_loss = nullptr;        // [num_tiles]
  int64_t* tile_confident = nullptr;  // [num_tiles]: valid and max target >= threshold
};

// InfoNCE of anchors against a positive and negatives read by row from a key table (U2PL's
// contrastive term): for anchor a of slot k, with cos = x.y / (max(|x|, 1e-8) max(|y|, 1e-8)),
// logits [cos(f_a, pos_k), cos(f_a, keys[rows[a, j]]) for j < M] / T, loss_a = weight_k * CE(logits, 0).
struct InfoNceArgs {
  int64_t K = 0, Q = 0, M = 0, D = 0;  // slots, anchors per slot, negatives per anchor, feature dim
  const float* anchors = nullptr;      // (K * Q, D) contiguous
  const float* positive = nullptr;     // (K, D) contiguous, unit length (or zero)
  const float* keys = nullptr;         // (R, D) contiguous
  const int64_t* rows = nullptr;       // (K * Q, M), in [0, R)
  const float* weight = nullptr;       // (K): 0 skips the slot
  float inv_temperature = 2.f;
  float* loss = nullptr;               // (K * Q): weighted loss per anchor
  float* grad = nullptr;               // (K * Q, D) d loss / d anchors, or nullptr
};

// Monodepth2's photometric reprojection loss of one image per work item (fp32, contiguous): per
// pixel and source, alpha mean_c clamp((1 - SSIM_c) / 2, 0, 1) + (1 - alpha) mean_c |t - w|, SSIM
// from 3x3 means over the reflection-padded image; the pixel's loss is the minimum over the S
// warped sources and the S identity ones (a warped source wins ties; identity only when strictly
// lower; NaN anywhere: NaN, no winner).
struct PhotometricArgs {
  int64_t S = 0, N = 0, H = 0, W = 0;
  const float* target = nullptr;    // (N, 3, H, W)
  const float* warped = nullptr;    // (S, N, 3, H, W)
  const float* identity = nullptr;  // (S, N, 3, H, W) or nullptr
  float alpha = 0.85f;
  float grad_scale = 1.f;           // d loss / d pixel loss (1 / (N H W))
  float* grad = nullptr;            // (S, N, 3, H, W), or nullptr
  int8_t* winner = nullptr;         // (N, H, W): the winning warped source, -1 for identity or NaN
  double* image_loss = nullptr;     // [N]: the sum of the pixel losses of each image
};

// Function table for one instruction set.
// out[i] = round(grad[i] * scale) for i in [0, n): the fp32 gradient a loss kept, times the
// incoming gradient, written once in the logits' fp16/bf16 dtype (both buffers dense, same strides).
struct ScaleRoundArgs {
  const float* grad = nullptr;
  void* out = nullptr;
  DType dtype = DType::BF16;
  float scale = 1.f;
};

struct KernelTable {
  void (*pixel_stats)(const PixelStatsArgs&, int64_t, int64_t);
  void (*cross_entropy)(const CrossEntropyArgs&, int64_t, int64_t);
  void (*fixmatch)(const FixMatchArgs&, int64_t, int64_t);
  void (*denominator)(const DenominatorArgs&, int64_t, int64_t);
  void (*pixel_stats_backward)(const PixelStatsBackwardArgs&, int64_t, int64_t);
  void (*negative_mask)(const NegativeMaskArgs&, int64_t, int64_t);
  void (*sum_squares)(const SumSquaresArgs&, int64_t, int64_t);
  void (*pseudoseg)(const PseudoSegArgs&, int64_t, int64_t);
  void (*scale_round)(const ScaleRoundArgs&, int64_t, int64_t);
  void (*infonce)(const InfoNceArgs&, int64_t, int64_t);
  void (*cps)(const CpsArgs&, int64_t, int64_t);
  void (*photometric)(const PhotometricArgs&, int64_t, int64_t);
  const char* name;
};

const KernelTable& kernels_generic();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512bf16();

}  // namespace ssf
