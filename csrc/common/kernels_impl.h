// The per-tile kernels of every op. This file is compiled once per instruction set: each
// translation unit in csrc/cpu/ includes it inside its own namespace (ssf::avx2,
// ssf::generic), after the standard headers and types.h. No include guard on purpose.
//
// Numerics (all in fp32, whatever the storage dtype):
//   m = max_c x_c, e_c = exp(x_c - m), s = sum_c e_c, lse = m + log s.
//   The mass outside the argmax / target class, rest = sum_{c != y} e_c, is summed directly,
//   never as s - e_y, so that confident pixels keep full relative precision:
//     entropy         = log1p(rest) - sum_c e_c (x_c - m) / s       (both terms >= 0)
//     cross-entropy   = log1p(rest) when x_y is the max, else m - x_y + log s
//     d ce / d x_y    = -rest / s   (not p_y - 1, which cancels)

#include "simd.h"
#include "tiles.h"

// Max and first argmax over classes, NaN-propagating like torch.max: the first NaN wins.
SSF_INLINE void max_argmax(const float* tile, int64_t C, int64_t P, int64_t v, vf& m, vi& idx) {
  m = vload(tile + v);
  idx = vi{};
  vi cv = vi{};
  for (int64_t c = 1; c < C; ++c) {
    cv += 1;
    const vf xc = vload(tile + c * P + v);
    const vi take = (xc > m) | ((xc != xc) & (m == m));
    m = vselect(take, xc, m);
    idx = vselecti(take, cv, idx);
  }
}

// Teacher statistics of one tile: confidence, argmax, and (optionally) entropy of softmax(x / T).
inline void tile_softmax_stats(const float* tile, int64_t C, int64_t P, float inv_t, float* conf, int32_t* label,
                               float* entropy) {
  for (int64_t v = 0; v < P; v += kVL) {
    vf m;
    vi idx;
    max_argmax(tile, C, P, v, m, idx);
    vf s{}, t{}, rest{};
    vi cv = vi{};
    for (int64_t c = 0; c < C; ++c, cv += 1) {
      const vf d = (vload(tile + c * P + v) - m) * inv_t;
      const vf e = vexp(d);
      s += e;
      if (entropy) {
        t += e * d;
        rest += vselect(idx == cv, vf{}, e);
      }
    }
    vstore(conf + v, 1.0f / s);
    vstorei(label + v, idx);
    if (entropy) vstore(entropy + v, vlog1p(rest) - t / s);
  }
}

// Cross-entropy of one tile against targets y (0 where inactive). For active pixels writes
// ce[p]; if `grad` is set, overwrites the tile with gscale[p] * d ce / d x (zero where inactive).
inline void tile_cross_entropy(float* tile, int64_t C, int64_t P, const int32_t* y, const int32_t* active,
                               const float* gscale, float* ce, bool grad) {
  for (int64_t v = 0; v < P; v += kVL) {
    const vi act = vloadi(active + v);
    if (!vany(act)) {
      vstore(ce + v, vf{});
      if (grad)
        for (int64_t c = 0; c < C; ++c) vstore(tile + c * P + v, vf{});
      continue;
    }
    const vi yv = vloadi(y + v);
    vf m = vload(tile + v);
    vi nan = m != m;
    vf xy = m;
    for (int64_t c = 1; c < C; ++c) {
      const vf xc = vload(tile + c * P + v);
      m = vselect(xc > m, xc, m);
      nan |= xc != xc;
      xy = vselect(yv == (int32_t)c, xc, xy);
    }
    vf s{}, rest{};
    for (int64_t c = 0; c < C; ++c) {
      const vf e = vexp(vload(tile + c * P + v) - m);
      s += e;
      rest += vselect(yv == (int32_t)c, vf{}, e);
      if (grad) vstore(tile + c * P + v, e);
    }
    vf l = vselect(xy == m, vlog1p(rest), (m - xy) + vlog(s));
    l = vselect(nan, vsplat(__builtin_nanf("")), l);
    vstore(ce + v, vselect(act, l, vf{}));
    if (grad) {
      const vf g = vselect(act, vload(gscale + v) / s, vf{});
      const vf gy = -(g * rest);
      for (int64_t c = 0; c < C; ++c) {
        const vf e = vload(tile + c * P + v);
        vstore(tile + c * P + v, vselect(yv == (int32_t)c, gy, g * e));
      }
    }
  }
}

struct TilePos {
  int64_t n, hw0, np;
};

inline TilePos tile_pos(const Shape& S, const Tiling& T, int64_t t) {
  TilePos r;
  r.n = t / T.tiles_per_image;
  r.hw0 = (t % T.tiles_per_image) * T.P;
  r.np = std::min(T.P, S.hw() - r.hw0);
  return r;
}

void pixel_stats_range(const PixelStatsArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  Scratch sc(S.C, P);
  std::vector<float> conf(P), ent(P);
  std::vector<int32_t> label(P);
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(S, a.tiling, t);
    load_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.logits, sc);
    tile_softmax_stats(sc.tile.data(), S.C, P, a.inv_temperature, conf.data(), label.data(),
                       a.entropy ? ent.data() : nullptr);
    const int64_t o = tp.n * S.hw() + tp.hw0;
    std::memcpy(a.confidence + o, conf.data(), tp.np * sizeof(float));
    if (a.entropy) std::memcpy(a.entropy + o, ent.data(), tp.np * sizeof(float));
    if (a.label_is_u8) {
      uint8_t* dst = static_cast<uint8_t*>(a.label) + o;
      for (int64_t p = 0; p < tp.np; ++p) dst[p] = (uint8_t)label[p];
    } else {
      int64_t* dst = static_cast<int64_t*>(a.label) + o;
      for (int64_t p = 0; p < tp.np; ++p) dst[p] = label[p];
    }
  }
}

inline void report_bad(BadTarget* bad, int64_t value, const Shape& S, int64_t n, int64_t hw) {
  bool expected = false;
  if (bad->claimed.compare_exchange_strong(expected, true)) {
    bad->value = value;
    bad->n = n;
    bad->h = hw / S.W;
    bad->w = hw % S.W;
    bad->found = true;
  }
}

void cross_entropy_range(const CrossEntropyArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  const bool grad = a.grad.data != nullptr;
  Scratch sc(S.C, P);
  std::vector<int32_t> y(P), active(P);
  std::vector<float> w(P), gscale(P), ce(P);
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(S, a.tiling, t);
    const int64_t* offs = map_offsets(a.target, S, tp.n, tp.hw0, tp.np, sc);
    for (int64_t p = 0; p < P; ++p) {
      y[p] = 0;
      active[p] = 0;
      w[p] = 0.f;
      if (p >= tp.np) continue;
      const int64_t yy = map_int(a.target, offs[p]);
      if (yy == a.ignore_index) continue;
      if (yy < 0 || yy >= S.C) {
        report_bad(a.bad, yy, S, tp.n, tp.hw0 + p);
        continue;
      }
      y[p] = (int32_t)yy;
      w[p] = 1.f;
      active[p] = -1;
    }
    if (a.weight.data) {
      offs = map_offsets(a.weight, S, tp.n, tp.hw0, tp.np, sc);
      for (int64_t p = 0; p < tp.np; ++p) {
        if (!active[p]) continue;
        w[p] = map_float(a.weight, offs[p]);
        if (w[p] == 0.f) active[p] = 0;
      }
    }
    for (int64_t p = 0; p < P; ++p) gscale[p] = w[p] * a.grad_scale;
    load_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.logits, sc);
    tile_cross_entropy(sc.tile.data(), S.C, P, y.data(), active.data(), gscale.data(), ce.data(), grad);
    double sum = 0.0;
    const int64_t o = tp.n * S.hw() + tp.hw0;
    for (int64_t p = 0; p < tp.np; ++p) {
      const float lp = active[p] ? w[p] * ce[p] : 0.f;
      sum += lp;
      if (a.loss_pixel) a.loss_pixel[o + p] = lp;
      if (a.ce_pixel) a.ce_pixel[o + p] = active[p] ? ce[p] : 0.f;
    }
    a.tile_loss[t] = sum;
    if (grad) store_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.grad, sc);
  }
}

// valid[p] for p < np from an ignore mask: bool masks mark ignored pixels with true,
// integer masks with ignore_index. Padding pixels are invalid.
inline void load_valid(int32_t* valid, const PixelMap& mask, int64_t ignore_index, const Shape& S, int64_t P,
                       const TilePos& tp, Scratch& sc) {
  for (int64_t p = 0; p < P; ++p) valid[p] = p < tp.np ? -1 : 0;
  if (!mask.data) return;
  const int64_t* offs = map_offsets(mask, S, tp.n, tp.hw0, tp.np, sc);
  for (int64_t p = 0; p < tp.np; ++p) {
    const int64_t v = map_int(mask, offs[p]);
    const bool ignored = mask.dtype == DType::Bool ? v != 0 : v == ignore_index;
    valid[p] = ignored ? 0 : -1;
  }
}

void fixmatch_range(const FixMatchArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  const bool grad = a.grad.data != nullptr;
  Scratch sc(S.C, P);
  std::vector<int32_t> valid(P), label(P);
  std::vector<float> conf(P), gscale(P, a.grad_scale), ce(P);
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(S, a.tiling, t);
    load_valid(valid.data(), a.ignore_mask, a.ignore_index, S, P, tp, sc);
    load_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.teacher, sc);
    tile_softmax_stats(sc.tile.data(), S.C, P, 1.f, conf.data(), label.data(), nullptr);
    int64_t confident = 0;
    for (int64_t p = 0; p < P; ++p) {
      valid[p] = (valid[p] && conf[p] >= a.threshold) ? -1 : 0;
      confident += valid[p] != 0;
    }
    load_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.student, sc);
    tile_cross_entropy(sc.tile.data(), S.C, P, label.data(), valid.data(), gscale.data(), ce.data(), grad);
    double sum = 0.0;
    for (int64_t p = 0; p < tp.np; ++p) sum += ce[p];
    a.tile_loss[t] = sum;
    a.tile_confident[t] = confident;
    if (grad) store_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.grad, sc);
  }
}

void denominator_range(const DenominatorArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  Scratch sc(1, P);
  std::vector<int32_t> valid(P);
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(S, a.tiling, t);
    if (a.target.data) {
      const int64_t* offs = map_offsets(a.target, S, tp.n, tp.hw0, tp.np, sc);
      for (int64_t p = 0; p < tp.np; ++p) valid[p] = map_int(a.target, offs[p]) != a.ignore_index;
    } else {
      load_valid(valid.data(), a.ignore_mask, a.ignore_index, S, P, tp, sc);
    }
    double count = 0.0, wsum = 0.0;
    if (a.weight.data) {
      const int64_t* offs = map_offsets(a.weight, S, tp.n, tp.hw0, tp.np, sc);
      for (int64_t p = 0; p < tp.np; ++p)
        if (valid[p]) wsum += map_float(a.weight, offs[p]);
    }
    for (int64_t p = 0; p < tp.np; ++p) count += valid[p] != 0;
    if (a.tile_valid) a.tile_valid[t] = count;
    if (a.tile_weight) a.tile_weight[t] = wsum;
  }
}

// With y the forward's argmax, p_c = conf * exp((x_c - x_y) / T) and log p_c = (x_c - x_y) / T + log conf:
//   d conf / d x_c = conf (1[c = y] - p_c) / T,   d H / d x_c = -p_c (log p_c + H) / T.
void pixel_stats_backward_range(const PixelStatsBackwardArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  Scratch sc(S.C, P);
  std::vector<float> conf(P), ent(P), gc(P), ge(P), xy(P);
  std::vector<int32_t> y(P);
  const float inv_t = a.inv_temperature;
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(S, a.tiling, t);
    load_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.logits, sc);
    auto load_map = [&](const PixelMap& m, float* dst, float fill) {
      if (!m.data) {
        for (int64_t p = 0; p < P; ++p) dst[p] = fill;
        return;
      }
      const int64_t* offs = map_offsets(m, S, tp.n, tp.hw0, tp.np, sc);
      for (int64_t p = 0; p < P; ++p) dst[p] = p < tp.np ? map_float(m, offs[p]) : fill;
    };
    load_map(a.confidence, conf.data(), 1.f);
    load_map(a.entropy, ent.data(), 0.f);
    load_map(a.grad_conf, gc.data(), 0.f);
    load_map(a.grad_ent, ge.data(), 0.f);
    const int64_t* offs = map_offsets(a.label, S, tp.n, tp.hw0, tp.np, sc);
    for (int64_t p = 0; p < P; ++p) {
      int64_t yy = p < tp.np ? map_int(a.label, offs[p]) : 0;
      if (yy < 0 || yy >= S.C) yy = 0;
      y[p] = (int32_t)yy;
      xy[p] = sc.tile[yy * P + p];
    }
    float* tile = sc.tile.data();
    for (int64_t v = 0; v < P; v += kVL) {
      const vf cf = vload(conf.data() + v);
      const vf h = vload(ent.data() + v);
      const vf a_conf = vload(gc.data() + v) * cf * inv_t;
      const vf b_ent = vload(ge.data() + v) * inv_t;
      const vf lconf = vlog(cf);
      const vf x_y = vload(xy.data() + v);
      const vi yv = vloadi(y.data() + v);
      vi cv = vi{};
      for (int64_t c = 0; c < S.C; ++c, cv += 1) {
        const vf d = (vload(tile + c * P + v) - x_y) * inv_t;
        const vf pc = cf * vexp(d);
        const vf onehot = vselect(yv == cv, vsplat(1.f), vf{});
        vstore(tile + c * P + v, a_conf * (onehot - pc) - b_ent * pc * (d + lconf + h));
      }
    }
    store_tile(tile, S, P, tp.n, tp.hw0, tp.np, a.grad, sc);
  }
}

// rank_c = #{c' : x_c' > x_c} + #{c' < c : x_c' == x_c}: the position of c in a stable
// descending sort, found by comparisons alone (C^2 per pixel, all in registers).
void negative_mask_range(const NegativeMaskArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P, C = S.C, HW = S.hw();
  Scratch sc(C, P);
  std::vector<int32_t> inside(C * P);
  const float* tile = sc.tile.data();
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(S, a.tiling, t);
    load_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.logits, sc);
    for (int64_t v = 0; v < P; v += kVL) {
      for (int64_t c = 0; c < C; ++c) {
        const vf xc = vload(tile + c * P + v);
        vi rank{};
        for (int64_t k = 0; k < c; ++k) rank -= vload(tile + k * P + v) >= xc;  // true is -1
        for (int64_t k = c + 1; k < C; ++k) rank -= vload(tile + k * P + v) > xc;
        vstorei(inside.data() + c * P + v, (rank >= (int32_t)a.low_rank) & (rank < (int32_t)a.high_rank));
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      uint8_t* dst = a.out + (tp.n * C + c) * HW + tp.hw0;
      for (int64_t p = 0; p < tp.np; ++p) dst[p] = inside[c * P + p] != 0;
    }
  }
}

const KernelTable& table() {
  static const KernelTable t = {pixel_stats_range,          cross_entropy_range, fixmatch_range, denominator_range,
                                pixel_stats_backward_range, negative_mask_range, SSF_ISA_NAME};
  return t;
}
