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

// A tile of C classes x P pixels as the kernels read it: element (c, v) at p[c * cs + v]. Either
// the scratch tile (cs = P) or, for fp32 tiles whose pixels are contiguous, the tensor itself
// (cs = its class stride), so the math streams from memory without a copy.
struct TileIn {
  const float* p;
  int64_t cs;
};
struct TileOut {
  float* p;  // nullptr: no gradient wanted
  int64_t cs;
};

// Max and first argmax over classes, NaN-propagating like torch.max: the first NaN wins.
SSF_INLINE void max_argmax(TileIn x, int64_t C, int64_t v, vf& m, vi& idx) {
  m = vload(x.p + v);
  idx = vi{};
  vi cv = vi{};
  for (int64_t c = 1; c < C; ++c) {
    cv += 1;
    const vf xc = vload(x.p + c * x.cs + v);
    const vi take = (xc > m) | ((xc != xc) & (m == m));
    m = vselect(take, xc, m);
    idx = vselecti(take, cv, idx);
  }
}

// Teacher statistics of one tile: confidence, argmax, and (optionally) entropy of softmax(x / T).
inline void tile_softmax_stats(TileIn x, int64_t C, int64_t P, float inv_t, float* conf, int32_t* label,
                               float* entropy) {
  for (int64_t v = 0; v < P; v += kVL) {
    vf m;
    vi idx;
    max_argmax(x, C, v, m, idx);
    vf s{}, t{}, rest{};
    vi cv = vi{};
    for (int64_t c = 0; c < C; ++c, cv += 1) {
      const vf d = (vload(x.p + c * x.cs + v) - m) * inv_t;
      const vf e = vexp(d);
      s += e;
      if (entropy) {
        t += vselect(e == 0.f, vf{}, e * d);  // a -inf logit has e = 0, and 0 * -inf is NaN
        rest += vselect(idx == cv, vf{}, e);
      }
    }
    vstore(conf + v, 1.0f / s);
    vstorei(label + v, idx);
    if (entropy) vstore(entropy + v, vlog1p(rest) - t / s);
  }
}

// Cross-entropy of one tile against targets y (0 where inactive). For active pixels writes
// ce[p]; if g.p is set, writes gscale[p] * d ce / d x there (zero where inactive). g may be the
// same memory as x: every element is read before it is written.
inline void tile_cross_entropy(TileIn x, TileOut g, int64_t C, int64_t P, const int32_t* y, const int32_t* active,
                               const float* gscale, float* ce) {
  const bool grad = g.p != nullptr;
  for (int64_t v = 0; v < P; v += kVL) {
    const vi act = vloadi(active + v);
    if (!vany(act)) {
      vstore(ce + v, vf{});
      if (grad)
        for (int64_t c = 0; c < C; ++c) vstore(g.p + c * g.cs + v, vf{});
      continue;
    }
    const vi yv = vloadi(y + v);
    vf m = vload(x.p + v);
    vi nan = m != m;
    vf xy = m;
    for (int64_t c = 1; c < C; ++c) {
      const vf xc = vload(x.p + c * x.cs + v);
      m = vselect(xc > m, xc, m);
      nan |= xc != xc;
      xy = vselect(yv == (int32_t)c, xc, xy);
    }
    vf s{}, rest{};
    for (int64_t c = 0; c < C; ++c) {
      const vf e = vexp(vload(x.p + c * x.cs + v) - m);
      s += e;
      rest += vselect(yv == (int32_t)c, vf{}, e);
      if (grad) vstore(g.p + c * g.cs + v, e);
    }
    vf l = vselect(xy == m, vlog1p(rest), (m - xy) + vlog(s));
    nan |= s != s;  // a +inf logit: its term is exp(inf - inf), so no softmax, as in the reference
    l = vselect(nan, vsplat(__builtin_nanf("")), l);
    vstore(ce + v, vselect(act, l, vf{}));
    if (grad) {
      const vf gs = vselect(act, vload(gscale + v) / s, vf{});
      const vf gy = -(gs * rest);
      for (int64_t c = 0; c < C; ++c) {
        const vf e = vload(g.p + c * g.cs + v);
        // Selected, not multiplied by 0: non-finite logits at inactive pixels still give 0.
        vstore(g.p + c * g.cs + v, vselect(act, vselect(yv == (int32_t)c, gy, gs * e), vf{}));
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
  if (T.tiles_per_row) {
    const int64_t i = t % T.tiles_per_image, x0 = (i % T.tiles_per_row) * T.P;
    r.hw0 = (i / T.tiles_per_row) * S.W + x0;
    r.np = std::min(T.P, S.W - x0);
  } else {
    r.hw0 = (t % T.tiles_per_image) * T.P;
    r.np = std::min(T.P, S.hw() - r.hw0);
  }
  return r;
}

#include "resample.h"

// The tile's logits: resampled from the source rows when the op resamples, read in place when
// they are fp32 with contiguous pixels and the tile is full, else converted into the scratch tile.
inline TileIn input_tile(const Logits& x, const Shape& S, const Tiling& T, const TilePos& tp, Scratch& sc) {
  const int64_t P = T.P;
  if (T.rs) return resampled_tile(x, S, T, tp, sc);
  if (x.dtype == DType::F32 && tp.np == P && pixels_contiguous(S.H, S.W, x.sH, x.sW)) {
    const float* base = static_cast<const float*>(x.data);
    return {base + tp.n * x.sN + (tp.hw0 / S.W) * x.sH + (tp.hw0 % S.W) * x.sW, x.sC};
  }
  load_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, x, sc);
  return {sc.tile.data(), P};
}

// Where the tile's gradient goes: in place under the same conditions, else the scratch tile
// (then written out, or added to the source rows' gradient, by finish_output).
inline TileOut output_tile(const GradOut& g, const Shape& S, const Tiling& T, const TilePos& tp, Scratch& sc) {
  const int64_t P = T.P;
  if (!g.data) return {nullptr, 0};
  if (!T.rs && g.dtype == DType::F32 && tp.np == P && pixels_contiguous(S.H, S.W, g.sH, g.sW)) {
    float* base = static_cast<float*>(g.data);
    return {base + tp.n * g.sN + (tp.hw0 / S.W) * g.sH + (tp.hw0 % S.W) * g.sW, g.sC};
  }
  return {sc.tile.data(), P};
}

inline void finish_output(TileOut out, const GradOut& g, const Shape& S, const Tiling& T, const TilePos& tp,
                          Scratch& sc) {
  if (out.p != sc.tile.data()) return;
  if (T.rs) {
    accumulate_tile(sc.tile.data(), g, S, T, tp, resample_state(sc, S, T));
  } else {
    store_tile(sc.tile.data(), S, T.P, tp.n, tp.hw0, tp.np, g, sc);
  }
}

void pixel_stats_range(const PixelStatsArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  Scratch sc(S.C, P);
  std::vector<float> conf(P), ent(P);
  std::vector<int32_t> label(P);
  for_each_tile(S, a.tiling, t0, t1, GradOut{}, sc, [&](const TilePos& tp, int64_t, bool) {
    const TileIn x = input_tile(a.logits, S, a.tiling, tp, sc);
    tile_softmax_stats(x, S.C, P, a.inv_temperature, conf.data(), label.data(), a.entropy ? ent.data() : nullptr);
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
  });
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
  Scratch sc(S.C, P);
  std::vector<int32_t> y(P), active(P);
  std::vector<int64_t> target(P);
  std::vector<float> w(P), gscale(P), ce(P);
  for_each_tile(S, a.tiling, t0, t1, a.grad, sc, [&](const TilePos& tp, int64_t t, bool owned) {
    load_map_ints(target.data(), a.target, S, tp.n, tp.hw0, tp.np, sc);
    for (int64_t p = 0; p < P; ++p) {
      y[p] = 0;
      active[p] = 0;
      w[p] = 0.f;
      if (p >= tp.np) continue;
      const int64_t yy = target[p];
      if (yy == a.ignore_index) continue;
      if (yy < 0 || yy >= S.C) {
        if (owned) report_bad(a.bad, yy, S, tp.n, tp.hw0 + p);
        continue;
      }
      y[p] = (int32_t)yy;
      w[p] = 1.f;
      active[p] = -1;
    }
    if (a.weight.data) {
      load_map_floats(gscale.data(), a.weight, S, tp.n, tp.hw0, tp.np, sc);
      for (int64_t p = 0; p < tp.np; ++p) {
        if (!active[p]) continue;
        w[p] = gscale[p];
        if (w[p] == 0.f) active[p] = 0;
      }
    }
    for (int64_t p = 0; p < P; ++p) gscale[p] = w[p] * a.grad_scale;
    const TileIn x = input_tile(a.logits, S, a.tiling, tp, sc);
    const TileOut g = output_tile(a.grad, S, a.tiling, tp, sc);
    tile_cross_entropy(x, g, S.C, P, y.data(), active.data(), gscale.data(), ce.data());
    if (owned) {
      double sum = 0.0;
      const int64_t o = tp.n * S.hw() + tp.hw0;
      for (int64_t p = 0; p < tp.np; ++p) {
        const float lp = active[p] ? w[p] * ce[p] : 0.f;
        sum += lp;
        if (a.loss_pixel) a.loss_pixel[o + p] = lp;
        if (a.ce_pixel) a.ce_pixel[o + p] = active[p] ? ce[p] : 0.f;
      }
      a.tile_loss[t] = sum;
    }
    finish_output(g, a.grad, S, a.tiling, tp, sc);
  });
}

// valid[p] for p < np from an ignore mask: bool masks mark ignored pixels with true,
// integer masks with ignore_index. Padding pixels are invalid.
inline void load_valid(int32_t* valid, const PixelMap& mask, int64_t ignore_index, const Shape& S, int64_t P,
                       const TilePos& tp, Scratch& sc) {
  for (int64_t p = 0; p < P; ++p) valid[p] = p < tp.np ? -1 : 0;
  if (!mask.data) return;
  std::vector<int64_t>& v = sc.map_values;
  load_map_ints(v.data(), mask, S, tp.n, tp.hw0, tp.np, sc);
  for (int64_t p = 0; p < tp.np; ++p) {
    const bool ignored = mask.dtype == DType::Bool ? v[p] != 0 : v[p] == ignore_index;
    valid[p] = ignored ? 0 : -1;
  }
}

void fixmatch_range(const FixMatchArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  Scratch sc(S.C, P);
  std::vector<int32_t> valid(P), label(P);
  std::vector<float> conf(P), gscale(P, a.grad_scale), ce(P);
  for_each_tile(S, a.tiling, t0, t1, a.grad, sc, [&](const TilePos& tp, int64_t t, bool owned) {
    load_valid(valid.data(), a.ignore_mask, a.ignore_index, S, P, tp, sc);
    tile_softmax_stats(input_tile(a.teacher, S, a.tiling, tp, sc), S.C, P, 1.f, conf.data(), label.data(), nullptr);
    int64_t confident = 0;
    for (int64_t p = 0; p < P; ++p) {
      valid[p] = (valid[p] && conf[p] >= a.threshold) ? -1 : 0;
      confident += valid[p] != 0;
    }
    const TileIn x = input_tile(a.student, S, a.tiling, tp, sc);
    const TileOut g = output_tile(a.grad, S, a.tiling, tp, sc);
    tile_cross_entropy(x, g, S.C, P, label.data(), valid.data(), gscale.data(), ce.data());
    if (owned) {
      double sum = 0.0;
      for (int64_t p = 0; p < tp.np; ++p) sum += ce[p];
      a.tile_loss[t] = sum;
      a.tile_confident[t] = confident;
    }
    finish_output(g, a.grad, S, a.tiling, tp, sc);
  });
}

// Cross pseudo-supervision. Per tile: the targets each network provides (its argmax and
// confidence, or given maps), then each network's cross-entropy against its peer's targets, its
// gradient written in place of its own tile.
void cps_range(const CpsArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  Scratch sc[2] = {Scratch(S.C, P), Scratch(S.C, P)};
  std::vector<int32_t> valid(P), label[2] = {std::vector<int32_t>(P), std::vector<int32_t>(P)}, active(P);
  std::vector<float> conf[2] = {std::vector<float>(P), std::vector<float>(P)}, gscale(P, a.grad_scale), ce(P);
  std::vector<int64_t> given(P);
  auto body = [&](const TilePos& tp, int64_t t, bool owned) {
    load_valid(valid.data(), a.ignore_mask, a.ignore_index, S, P, tp, sc[0]);
    TileIn x[2];
    for (int k = 0; k < 2; ++k) {
      x[k] = input_tile(a.logits[k], S, a.tiling, tp, sc[k]);
      if (!a.label[k].data) {
        tile_softmax_stats(x[k], S.C, P, 1.f, conf[k].data(), label[k].data(), nullptr);
        continue;
      }
      load_map_ints(given.data(), a.label[k], S, tp.n, tp.hw0, tp.np, sc[k]);
      load_map_floats(conf[k].data(), a.confidence[k], S, tp.n, tp.hw0, tp.np, sc[k]);
      for (int64_t p = 0; p < P; ++p) {
        const int64_t y = p < tp.np ? given[p] : 0;
        const bool in_range = y >= 0 && y < S.C;
        if (!in_range && y != a.ignore_index && owned) report_bad(a.bad[k], y, S, tp.n, tp.hw0 + p);
        label[k][p] = in_range ? (int32_t)y : -1;  // -1: no target here
      }
    }
    for (int k = 0; k < 2; ++k) {
      const int peer = 1 - k;
      int64_t count = 0;
      for (int64_t p = 0; p < P; ++p) {
        const float cp = conf[peer][p];  // NaN: a row without a softmax, which gives no target
        const bool on = valid[p] && label[peer][p] >= 0 && cp == cp && (a.threshold <= 0.f || cp >= a.threshold);
        active[p] = on ? -1 : 0;
        count += on;
      }
      const TileOut g = output_tile(a.grad[k], S, a.tiling, tp, sc[k]);  // may alias x[k], read first
      tile_cross_entropy(x[k], g, S.C, P, label[peer].data(), active.data(), gscale.data(), ce.data());
      if (owned) {
        double sum = 0.0;
        for (int64_t p = 0; p < tp.np; ++p) sum += ce[p];
        a.tile_loss[k][t] = sum;
        a.tile_count[k][t] = count;
      }
      finish_output(g, a.grad[k], S, a.tiling, tp, sc[k]);
    }
  };
  for_each_tile(S, a.tiling, t0, t1, a.grad[0], sc[0], body, a.grad[1], &sc[1]);
}

void denominator_range(const DenominatorArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  Scratch sc(1, P);
  std::vector<int32_t> valid(P);
  std::vector<float> weights(P);
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(S, a.tiling, t);
    if (a.target.data) {
      load_map_ints(sc.map_values.data(), a.target, S, tp.n, tp.hw0, tp.np, sc);
      for (int64_t p = 0; p < tp.np; ++p) valid[p] = sc.map_values[p] != a.ignore_index;
    } else {
      load_valid(valid.data(), a.ignore_mask, a.ignore_index, S, P, tp, sc);
    }
    double count = 0.0, wsum = 0.0;
    if (a.weight.data) {
      load_map_floats(weights.data(), a.weight, S, tp.n, tp.hw0, tp.np, sc);
      for (int64_t p = 0; p < tp.np; ++p)
        if (valid[p]) wsum += weights[p];
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
  for_each_tile(S, a.tiling, t0, t1, a.grad, sc, [&](const TilePos& tp, int64_t, bool) {
    if (a.tiling.rs) {
      resampled_tile(a.logits, S, a.tiling, tp, sc);
    } else {
      load_tile(sc.tile.data(), S, P, tp.n, tp.hw0, tp.np, a.logits, sc);
    }
    auto load_map = [&](const PixelMap& m, float* dst, float fill) {
      for (int64_t p = 0; p < P; ++p) dst[p] = fill;
      if (m.data) load_map_floats(dst, m, S, tp.n, tp.hw0, tp.np, sc);
    };
    load_map(a.confidence, conf.data(), 1.f);
    load_map(a.entropy, ent.data(), 0.f);
    load_map(a.grad_conf, gc.data(), 0.f);
    load_map(a.grad_ent, ge.data(), 0.f);
    load_map_ints(sc.map_values.data(), a.label, S, tp.n, tp.hw0, tp.np, sc);
    for (int64_t p = 0; p < P; ++p) {
      int64_t yy = p < tp.np ? sc.map_values[p] : 0;
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
        const vf dent = vselect(pc == 0.f, vf{}, pc * (d + lconf + h));  // pc = 0 where d = -inf
        vstore(tile + c * P + v, a_conf * (onehot - pc) - b_ent * dent);
      }
    }
    finish_output({tile, P}, a.grad, S, a.tiling, tp, sc);
  });
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

void sum_squares_range(const SumSquaresArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P;
  Scratch sc(S.C, P);
  for_each_tile(S, a.tiling, t0, t1, GradOut{}, sc, [&](const TilePos& tp, int64_t t, bool) {
    const TileIn x = input_tile(a.x, S, a.tiling, tp, sc);  // padding pixels are 0
    double sum = 0.0;
    for (int64_t c = 0; c < S.C; ++c) {
      vf acc{};
      for (int64_t v = 0; v < P; v += kVL) {
        const vf xv = vload(x.p + c * x.cs + v);
        acc += xv * xv;
      }
      for (int i = 0; i < kVL; ++i) sum += acc[i];
    }
    a.tile_sum[t] = sum;
  });
}

// PseudoSeg's consistency loss. Per pixel, with s the global scale:
//   q = gamma softmax(s p) + (1 - gamma) softmax(s m),  r_c = q_c^(1/T),  t = r / R (R = sum_c r_c);
//   soft: loss = sum_c t_c (lse(z) - z_c) = log sum_c e^(z_c - max z) - sum_c t_c (z_c - max z),
//         d loss / d z = softmax(z) - t;
//   hard: cross-entropy against argmax t (the same precise form as tile_cross_entropy).
// A pixel counts when it is valid and (threshold > 0 only) max t >= threshold.
void pseudoseg_range(const PseudoSegArgs& a, int64_t t0, int64_t t1) {
  const Shape& S = a.shape;
  const int64_t P = a.tiling.P, C = S.C;
  Scratch sp(C, P), sm(C, P), sz(C, P);
  std::vector<float> r(C * P), em(C * P), ce(P);  // r holds exp(s (p - max p)) until it holds r
  std::vector<int32_t> valid(P);
  const float s = a.scale, inv_t = a.inv_temperature;
  const bool square = inv_t == 2.f, identity = inv_t == 1.f;
  const vf gamma = vsplat(a.gamma), gamma_m = vsplat(1.f - a.gamma);
  for_each_tile(S, a.tiling, t0, t1, a.grad, sz, [&](const TilePos& tp, int64_t t, bool owned) {
    load_valid(valid.data(), a.ignore_mask, 255, S, P, tp, sp);
    const TileIn p = input_tile(a.decoder, S, a.tiling, tp, sp);
    const TileIn m = input_tile(a.sgc, S, a.tiling, tp, sm);
    const TileIn z = input_tile(a.student, S, a.tiling, tp, sz);
    const TileOut g = output_tile(a.grad, S, a.tiling, tp, sz);  // may alias z: each z_c is read before g_c is written
    int64_t confident = 0;
    for (int64_t v = 0; v < P; v += kVL) {
      vf mp = vload(p.p + v), mm = vload(m.p + v);
      for (int64_t c = 1; c < C; ++c) {
        const vf pc = vload(p.p + c * p.cs + v), mc = vload(m.p + c * m.cs + v);
        mp = vselect(pc > mp, pc, mp);
        mm = vselect(mc > mm, mc, mm);
      }
      vf sum_p{}, sum_m{};
      for (int64_t c = 0; c < C; ++c) {
        const vf ep = vexp((vload(p.p + c * p.cs + v) - mp) * s);
        const vf e2 = vexp((vload(m.p + c * m.cs + v) - mm) * s);
        vstore(r.data() + c * P + v, ep);
        vstore(em.data() + c * P + v, e2);
        sum_p += ep;
        sum_m += e2;
      }
      const vf wp = gamma / sum_p, wm = gamma_m / sum_m;
      vf R{}, rmax = vsplat(-1.f);
      vi y{}, cv{};
      for (int64_t c = 0; c < C; ++c, cv += 1) {
        const vf q = wp * vload(r.data() + c * P + v) + wm * vload(em.data() + c * P + v);
        const vf rc = square ? q * q : identity ? q : vselect(q > 0.f, vexp(vlog(q) * inv_t), vf{});
        vstore(r.data() + c * P + v, rc);
        R += rc;
        const vi take = rc > rmax;
        rmax = vselect(take, rc, rmax);
        y = vselecti(take, cv, y);
      }
      const vf inv_r = 1.0f / R;
      vi act = vloadi(valid.data() + v);
      if (a.threshold > 0.f) act &= rmax * inv_r >= a.threshold;
      vf mz = vload(z.p + v);
      for (int64_t c = 1; c < C; ++c) {
        const vf zc = vload(z.p + c * z.cs + v);
        mz = vselect(zc > mz, zc, mz);
      }
      vf sum_z{}, rz{}, rest{}, zy{};
      cv = vi{};
      for (int64_t c = 0; c < C; ++c, cv += 1) {
        const vf zc = vload(z.p + c * z.cs + v);
        const vf d = zc - mz;
        const vf e = vexp(d);
        sum_z += e;
        if (a.soft) {
          rz += vload(r.data() + c * P + v) * d;
        } else {
          rest += vselect(y == cv, vf{}, e);
          zy = vselect(y == cv, zc, zy);
        }
        if (g.p) vstore(g.p + c * g.cs + v, e);
      }
      const vf hard = vselect(sum_z != sum_z, sum_z, vselect(zy == mz, vlog1p(rest), (mz - zy) + vlog(sum_z)));
      const vf loss = a.soft ? vlog(sum_z) - rz * inv_r : hard;  // hard: NaN without a softmax (a +inf logit)
      vstore(ce.data() + v, vselect(act, loss, vf{}));
      for (int i = 0; i < kVL; ++i) confident += act[i] != 0;
      if (g.p) {
        const vf gs = vselect(act, a.grad_scale / sum_z, vf{});
        const vf gt = vselect(act, a.grad_scale * inv_r, vf{});
        cv = vi{};
        for (int64_t c = 0; c < C; ++c, cv += 1) {
          const vf e = vload(g.p + c * g.cs + v);
          const vf gc = a.soft ? gs * e - gt * vload(r.data() + c * P + v)
                               : vselect(y == cv, -(gs * rest), gs * e);
          vstore(g.p + c * g.cs + v, vselect(act, gc, vf{}));
        }
      }
    }
    if (owned) {
      double sum = 0.0;
      for (int64_t q = 0; q < tp.np; ++q) sum += ce[q];
      a.tile_loss[t] = sum;
      a.tile_confident[t] = confident;
    }
    finish_output(g, a.grad, S, a.tiling, tp, sz);
  });
}

template <DType D>
void scale_round_t(const ScaleRoundArgs& a, int64_t b, int64_t e) {
  using T = typename Storage<D>::type;
  constexpr int64_t kChunk = 1024;  // a stack buffer of products, converted as a tile row is
  alignas(64) float buf[kChunk];
  const vf s = vsplat(a.scale);
  T* out = static_cast<T*>(a.out);
  for (int64_t i0 = b; i0 < e; i0 += kChunk) {
    const int64_t n = std::min(kChunk, e - i0);
    int64_t i = 0;
    for (; i + kVL <= n; i += kVL) vstore(buf + i, vload(a.grad + i0 + i) * s);
    for (; i < n; ++i) buf[i] = a.grad[i0 + i] * a.scale;
    from_f32<D>(out + i0, buf, n);
  }
}

void scale_round_range(const ScaleRoundArgs& a, int64_t b, int64_t e) {
  if (a.dtype == DType::F16) {
    scale_round_t<DType::F16>(a, b, e);
  } else {
    scale_round_t<DType::BF16>(a, b, e);
  }
}

// Sum over i < n of a[i] * b[i] (and of b[i]^2 when bb is given), kVL lanes at a time.
SSF_INLINE float dot(const float* a, const float* b, int64_t n, float* bb = nullptr) {
  vf acc = vf{}, acc2 = vf{};
  int64_t i = 0;
  for (; i + kVL <= n; i += kVL) {
    const vf y = vload(b + i);
    acc += vload(a + i) * y;
    acc2 += y * y;
  }
  float s = 0.f, s2 = 0.f;
  for (int l = 0; l < kVL; ++l) {
    s += acc[l];
    s2 += acc2[l];
  }
  for (; i < n; ++i) {
    s += a[i] * b[i];
    s2 += b[i] * b[i];
  }
  if (bb) *bb = s2;
  return s;
}

// out[i] += s * b[i]
SSF_INLINE void axpy(float* out, float s, const float* b, int64_t n) {
  const vf sv = vsplat(s);
  int64_t i = 0;
  for (; i + kVL <= n; i += kVL) vstore(out + i, vload(out + i) + sv * vload(b + i));
  for (; i < n; ++i) out[i] += s * b[i];
}

// Anchors [a0, a1): each negative row is read once for its dot product and norm and once more for
// the gradient, while it is still in cache; nothing the size of the gathered negatives is written.
void infonce_range(const InfoNceArgs& a, int64_t a0, int64_t a1) {
  const int64_t D = a.D, M = a.M;
  std::vector<float> logit(M + 1), inv_norm(M), dq(D);
  for (int64_t i = a0; i < a1; ++i) {
    const int64_t k = i / a.Q;
    const float w = a.weight[k];
    float* g = a.grad ? a.grad + i * D : nullptr;
    if (w == 0.f) {  // an inactive slot: no loss, no gradient, rows not read
      a.loss[i] = 0.f;
      if (g) std::fill(g, g + D, 0.f);
      continue;
    }
    const float* f = a.anchors + i * D;
    const float* pos = a.positive + k * D;
    const int64_t* rows = a.rows + i * M;
    float ff = 0.f;
    const float fp = dot(pos, f, D, &ff);
    const float nf = std::sqrt(ff);
    const float inv_nf = 1.f / std::max(nf, 1e-8f);
    const float scale = inv_nf * a.inv_temperature;
    logit[0] = fp * scale;
    float mx = logit[0];
    for (int64_t j = 0; j < M; ++j) {
      float kk = 0.f;
      const float fk = dot(f, a.keys + rows[j] * D, D, &kk);
      inv_norm[j] = 1.f / std::max(std::sqrt(kk), 1e-8f);
      logit[j + 1] = fk * inv_norm[j] * scale;
      mx = std::max(mx, logit[j + 1]);
    }
    const float l0 = logit[0];
    float s = 0.f;
    for (int64_t j = 0; j <= M; ++j) s += (logit[j] = std::exp(logit[j] - mx));  // logit now holds exp
    a.loss[i] = w * (mx + std::log(s) - l0);
    if (!g) continue;
    // d loss / d q (q = f / max(|f|, 1e-8)) = w / T * (sum_j p_j y_j - pos), y_j the unit keys
    const float c = w * a.inv_temperature / s;
    std::fill(dq.begin(), dq.end(), 0.f);
    axpy(dq.data(), c * logit[0] - w * a.inv_temperature, pos, D);
    for (int64_t j = 0; j < M; ++j) axpy(dq.data(), c * logit[j + 1] * inv_norm[j], a.keys + rows[j] * D, D);
    // through the normalisation: (dq - q (q . dq)) / |f|, or dq / 1e-8 where the norm was clamped
    const float qdq = nf > 1e-8f ? dot(f, dq.data(), D) * inv_nf : 0.f;
    for (int64_t d = 0; d < D; ++d) g[d] = (dq[d] - f[d] * inv_nf * qdq) * inv_nf;
  }
}


// -- photometric reprojection loss ------------------------------------------------------------
namespace photometric {

constexpr float kC1 = 0.01f * 0.01f, kC2 = 0.03f * 0.03f;

inline int64_t reflect(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// out = the 3x3 means of in over reflected rows and columns (avg_pool2d of the reflection-padded
// plane), as a row pass of 3-tap sums then a column pass. row: H * W scratch.
inline void box_mean(const float* in, float* out, float* row, int64_t H, int64_t W) {
  for (int64_t i = 0; i < H; ++i) {
    const float* x = in + i * W;
    float* r = row + i * W;
    r[0] = x[1] + x[0] + x[1];
    for (int64_t j = 1; j < W - 1; ++j) r[j] = x[j - 1] + x[j] + x[j + 1];
    r[W - 1] = x[W - 2] + x[W - 1] + x[W - 2];
  }
  const float k = 1.f / 9.f;
  for (int64_t i = 0; i < H; ++i) {
    const float *up = row + reflect(i - 1, H) * W, *mid = row + i * W, *down = row + reflect(i + 1, H) * W;
    float* o = out + i * W;
    for (int64_t j = 0; j < W; ++j) o[j] = (up[j] + mid[j] + down[j]) * k;
  }
}

// out += the adjoint of box_mean applied to g: each output position hands its gradient / 9 to every
// position of its reflected window, as often as that position occurs in it. row: H * W scratch.
inline void box_mean_adjoint(const float* g, float* out, float* row, int64_t H, int64_t W) {
  std::fill(row, row + H * W, 0.f);
  const float k = 1.f / 9.f;
  for (int64_t i = 0; i < H; ++i) {
    const float* gi = g + i * W;
    for (int64_t d = -1; d <= 1; ++d) {
      float* r = row + reflect(i + d, H) * W;
      for (int64_t j = 0; j < W; ++j) r[j] += gi[j] * k;
    }
  }
  for (int64_t i = 0; i < H; ++i) {
    const float* r = row + i * W;
    float* o = out + i * W;
    o[1] += r[0] + r[0];  // column -1 reflects to 1
    o[0] += r[0];
    for (int64_t j = 1; j < W - 1; ++j) {
      o[j - 1] += r[j];
      o[j] += r[j];
      o[j + 1] += r[j];
    }
    o[W - 2] += r[W - 1] + r[W - 1];  // column W reflects to W - 2
    o[W - 1] += r[W - 1];
  }
}

// clamp((1 - SSIM) / 2, 0, 1) from the 3x3 means of x, y, x^2, y^2, xy and, when d != nullptr,
// its derivatives with respect to those of x, x^2 and xy (x: the warped image), as torch.clamp
// passes the gradient: where the value is inside [0, 1], bounds included. NaN stays NaN.
inline float ssim_error(float mx, float my, float xx, float yy, float xy, float* d) {
  const float a1 = 2.f * mx * my + kC1, a2 = 2.f * (xy - mx * my) + kC2;
  const float b1 = mx * mx + my * my + kC1, b2 = (xx - mx * mx) + (yy - my * my) + kC2;
  const float num = a1 * a2, den = b1 * b2;
  const float e = (1.f - num / den) * 0.5f;
  if (d) {
    const float inside = (e >= 0.f && e <= 1.f) ? -0.5f : 0.f;  // d e / d ssim
    const float inv = 1.f / den, ssim_over_den = num * inv * inv;
    d[0] = inside * (2.f * my * (a2 - a1) * inv - ssim_over_den * 2.f * mx * (b2 - b1));
    d[1] = inside * (-ssim_over_den * b1);
    d[2] = inside * (2.f * a1 * inv);
  }
  return std::min(std::max(e, 0.f), 1.f);
}

}  // namespace photometric

// One image per work item. Scratch per item: the target's means, each warped source's means (kept
// for its gradient), the error of the source at hand, the best error so far.
void photometric_range(const PhotometricArgs& a, int64_t n0, int64_t n1) {
  using namespace photometric;
  const int64_t H = a.H, W = a.W, plane = H * W, image = 3 * plane, source = a.N * image, S = a.S;
  std::vector<float> row(plane), sq(plane), my(image), yy(image), err(plane), best(plane);
  std::vector<float> moments((size_t)S * 3 * image);  // per warped source: means of x, x^2, xy
  std::vector<float> coef(3 * plane), back(3 * plane);
  const float alpha3 = a.alpha / 3.f, l1_3 = (1.f - a.alpha) / 3.f;
  for (int64_t n = n0; n < n1; ++n) {
    const float* t = a.target + n * image;
    int8_t* win = a.winner + n * plane;
    for (int c = 0; c < 3; ++c) {
      const float* y = t + c * plane;
      box_mean(y, my.data() + c * plane, row.data(), H, W);
      for (int64_t p = 0; p < plane; ++p) sq[p] = y[p] * y[p];
      box_mean(sq.data(), yy.data() + c * plane, row.data(), H, W);
    }
    // err = the error of source x, with its means written to m (3 planes per channel) or scratch
    auto error_of = [&](const float* x, float* m) {
      std::fill(err.begin(), err.end(), 0.f);
      for (int c = 0; c < 3; ++c) {
        const float *xc = x + c * plane, *yc = t + c * plane;
        float *mx = m + c * 3 * plane, *xx = mx + plane, *xy = xx + plane;
        box_mean(xc, mx, row.data(), H, W);
        for (int64_t p = 0; p < plane; ++p) sq[p] = xc[p] * xc[p];
        box_mean(sq.data(), xx, row.data(), H, W);
        for (int64_t p = 0; p < plane; ++p) sq[p] = xc[p] * yc[p];
        box_mean(sq.data(), xy, row.data(), H, W);
        const float *myc = my.data() + c * plane, *yyc = yy.data() + c * plane;
        for (int64_t p = 0; p < plane; ++p)
          err[p] += alpha3 * ssim_error(mx[p], myc[p], xx[p], yyc[p], xy[p], nullptr) + l1_3 * std::fabs(yc[p] - xc[p]);
      }
    };
    // best / winner over the warped sources (the first wins ties), then identity (strictly lower)
    std::vector<uint8_t> nan(plane, 0);
    for (int64_t s = 0; s < S; ++s) {
      error_of(a.warped + s * source + n * image, moments.data() + s * 3 * image);
      for (int64_t p = 0; p < plane; ++p) {
        const float e = err[p];
        nan[p] |= e != e;
        if (s == 0 || e < best[p]) best[p] = e, win[p] = (int8_t)s;
      }
    }
    if (a.identity) {
      std::vector<float> scratch(3 * image);
      for (int64_t s = 0; s < S; ++s) {
        error_of(a.identity + s * source + n * image, scratch.data());
        for (int64_t p = 0; p < plane; ++p) {
          const float e = err[p];
          nan[p] |= e != e;
          if (e < best[p]) best[p] = e, win[p] = -1;
        }
      }
    }
    double total = 0.0;
    for (int64_t p = 0; p < plane; ++p) {
      if (nan[p]) best[p] = std::nanf(""), win[p] = -1;
      total += best[p];
    }
    a.image_loss[n] = total;
    if (!a.grad) continue;
    // The winner's gradient: the SSIM term through the 3x3 means (the adjoint of box_mean), the L1
    // term at the pixel itself; each source's planes only where it won.
    for (int64_t s = 0; s < S; ++s) {
      const float* x = a.warped + s * source + n * image;
      float* g = a.grad + s * source + n * image;
      for (int c = 0; c < 3; ++c) {
        const float *xc = x + c * plane, *yc = t + c * plane, *m = moments.data() + s * 3 * image + c * 3 * plane;
        const float *myc = my.data() + c * plane, *yyc = yy.data() + c * plane;
        float *d0 = coef.data(), *d1 = d0 + plane, *d2 = d1 + plane;
        for (int64_t p = 0; p < plane; ++p) {
          float d[3] = {0.f, 0.f, 0.f};
          if (win[p] == s || nan[p]) ssim_error(m[p], myc[p], m[plane + p], yyc[p], m[2 * plane + p], d);
          // a source that did not win hands on 0 times its derivatives, as autograd does: NaN
          // where they are NaN (its means hold a NaN), so a NaN spreads over its 3x3 window
          const float keep = win[p] == s ? 1.f : 0.f;
          d0[p] = keep * d[0], d1[p] = keep * d[1], d2[p] = keep * d[2];
        }
        std::fill(back.begin(), back.end(), 0.f);
        for (int k = 0; k < 3; ++k) box_mean_adjoint(coef.data() + k * plane, back.data() + k * plane, row.data(), H, W);
        const float *b0 = back.data(), *b1 = b0 + plane, *b2 = b1 + plane;
        float* gc = g + c * plane;
        const float ks = a.grad_scale * alpha3, kl = a.grad_scale * l1_3;
        for (int64_t p = 0; p < plane; ++p) {
          const float diff = xc[p] - yc[p];
          const float l1 = win[p] == s ? kl * (float)((diff > 0.f) - (diff < 0.f)) : 0.f;
          gc[p] = nan[p] ? std::nanf("") : ks * (b0[p] + 2.f * xc[p] * b1[p] + yc[p] * b2[p]) + l1;
        }
      }
    }
  }
}

const KernelTable& table() {
  static const KernelTable t = {pixel_stats_range,          cross_entropy_range, fixmatch_range, denominator_range,
                                pixel_stats_backward_range, negative_mask_range, sum_squares_range,
                                pseudoseg_range,            scale_round_range,   infonce_range,
                                cps_range,                  photometric_range,   SSF_ISA_NAME};
  return t;
}
