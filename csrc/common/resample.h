// Reading logits bilinearly resampled to the op's output grid, and writing their gradient back,
// without the resampled tensor (see Resample in types.h). Included by kernels_impl.h inside an
// instruction-set namespace after tiles.h; no include guard on purpose.
//
// Forward, as F.interpolate computes it: each source row a tile needs is interpolated along x once
// into a cached [C][W] row (torch's order: along x, then y), and a tile of output row Y is then the
// blend ly0 * row(y0) + ly1 * row(y1), in vectors.
// Backward: a tile's gradient is split between the two rows' [C][W] accumulators (ly0 g, ly1 g);
// when no later output row can reach a source row, its accumulator is folded along x into the
// source columns and written out. Only the band's own source rows are accumulated: the thread of a
// band is their only writer.

struct ResampleState {
  int64_t w_pad;
  Scratch low;                   // staging for one source row: [C][w_pad]
  std::vector<float> raw;        // one source row as fp32, [C][w_pad] (zeros past w: whole vectors may be read)
  // Rows interpolated along x, [C][W + P] (zero beyond W, so full tiles read zeros there):
  // two rows for each of up to four logits tensors.
  struct Rows {
    const void* data = nullptr;
    int64_t key[2] = {-1, -1};   // n * h + y of each slot
    std::vector<float> row[2];
  } cache[4];
  // Gradient of the band's source rows lo and lo + 1, along the output's x, [C][W + P].
  std::vector<float> acc[2];
  int64_t n = 0, lo = 0, a = 0, b = 0;
  ResampleState(int64_t C, int64_t w) : w_pad(((w + 15) / 16) * 16 + 16), low(C, w_pad), raw(C * w_pad) {}
};

inline ResampleState& resample_state(Scratch& sc, const Shape& S, const Tiling& T) {
  if (!sc.resample) sc.resample = std::make_shared<ResampleState>(S.C, T.rs->w);
  return *sc.resample;
}

// o[X] = in[x0[X]] lx0[X] + in[x1[X]] lx1[X] for X < W. A vector of outputs whose taps lie within
// kVL source columns (any upsampling, and most downsampling by less than kVL) is two permutes of
// one load; `in` must be readable kVL floats past its last tap.
inline void interpolate_row(float* o, const float* in, const Resample& rs, int64_t W) {
  int64_t X = 0;
  for (; X + kVL <= W; X += kVL) {
    const int32_t base = rs.x0[X];
    if (rs.x1[X + kVL - 1] - base < kVL) {
      const vf win = vload(in + base);
      const vi i0 = vloadi(rs.x0 + X) - base, i1 = vloadi(rs.x1 + X) - base;
      vstore(o + X, __builtin_shuffle(win, i0) * vload(rs.lx0 + X) + __builtin_shuffle(win, i1) * vload(rs.lx1 + X));
    } else {
      for (int64_t k = X; k < X + kVL; ++k) o[k] = in[rs.x0[k]] * rs.lx0[k] + in[rs.x1[k]] * rs.lx1[k];
    }
  }
  for (; X < W; ++X) o[X] = in[rs.x0[X]] * rs.lx0[X] + in[rs.x1[X]] * rs.lx1[X];
}

// Source row (n, y) of x interpolated along x; `keep` names a cached row not to evict.
inline const float* source_row(const Logits& x, const Shape& S, const Tiling& T, int64_t n, int64_t y, int64_t keep,
                               ResampleState& st) {
  const Resample& rs = *T.rs;
  ResampleState::Rows* rows = nullptr;
  for (auto& r : st.cache)
    if (r.data == x.data || !r.data) {
      rows = &r;
      break;
    }
  if (!rows) rows = &st.cache[0];  // more inputs than slots: correct, only slower
  if (rows->data != x.data) {
    rows->data = x.data;
    rows->key[0] = rows->key[1] = -1;
  }
  const int64_t key = n * rs.h + y;
  for (int s = 0; s < 2; ++s)
    if (rows->key[s] == key) return rows->row[s].data();
  const int s = rows->key[0] == n * rs.h + keep ? 1 : 0;
  std::vector<float>& out = rows->row[s];
  if (out.empty()) out.assign(S.C * (S.W + T.P), 0.f);  // columns from W on stay 0
  const Shape src{S.N, S.C, rs.h, rs.w};
  load_tile(st.raw.data(), src, st.w_pad, n, y * rs.w, rs.w, x, st.low);
  for (int64_t c = 0; c < S.C; ++c) interpolate_row(out.data() + c * (S.W + T.P), st.raw.data() + c * st.w_pad, rs, S.W);
  rows->key[s] = key;
  return out.data();
}

// The [C][P] tile of output pixels tp (one output row) read from the source rows, into sc.tile.
inline TileIn resampled_tile(const Logits& x, const Shape& S, const Tiling& T, const TilePos& tp, Scratch& sc) {
  ResampleState& st = resample_state(sc, S, T);
  const Resample& rs = *T.rs;
  const int64_t Y = tp.hw0 / S.W, X0 = tp.hw0 % S.W, P = T.P, stride = S.W + T.P;
  const float* r0 = source_row(x, S, T, tp.n, rs.y0[Y], rs.y1[Y], st);
  const float* r1 = source_row(x, S, T, tp.n, rs.y1[Y], rs.y0[Y], st);
  const vf l0 = vsplat(rs.ly0[Y]), l1 = vsplat(rs.ly1[Y]);
  float* tile = sc.tile.data();
  for (int64_t c = 0; c < S.C; ++c) {
    const float* a = r0 + c * stride + X0;
    const float* b = r1 + c * stride + X0;
    float* o = tile + c * P;
    for (int64_t v = 0; v < P; v += kVL) vstore(o + v, vload(a + v) * l0 + vload(b + v) * l1);
    // columns past the row's end read the zero padding: 0, as a tile's padding pixels must be
  }
  return {tile, P};
}

// Folds source row lo's accumulator along x into the source columns and writes that row.
inline void flush_row(const GradOut& g, const Shape& S, const Tiling& T, ResampleState& st, const float* acc,
                      int64_t y) {
  const Resample& rs = *T.rs;
  const int64_t stride = S.W + T.P;
  float* out = st.raw.data();
  std::fill(st.raw.begin(), st.raw.end(), 0.f);
  if (acc) {
    for (int64_t c = 0; c < S.C; ++c) {
      const float* in = acc + c * stride;
      float* o = out + c * st.w_pad;
      for (int64_t X = 0; X < S.W; ++X) {
        o[rs.x0[X]] += rs.lx0[X] * in[X];
        o[rs.x1[X]] += rs.lx1[X] * in[X];
      }
    }
  }
  const Shape src{S.N, S.C, rs.h, rs.w};
  store_tile(out, src, st.w_pad, st.n, y * rs.w, rs.w, g, st.low);
}

inline void band_begin(ResampleState& st, const Shape& S, const Tiling& T, int64_t n, int64_t a, int64_t b) {
  st.n = n;
  st.a = st.lo = a;
  st.b = b;
  for (auto& r : st.acc) r.assign(S.C * (S.W + T.P), 0.f);
}

// Writes source rows lo .. y - 1, whose gradient is complete (no later output row reads them).
inline void band_advance(ResampleState& st, const GradOut& g, const Shape& S, const Tiling& T, int64_t y) {
  while (st.lo < y && st.lo < st.b) {
    flush_row(g, S, T, st, st.acc[0].data(), st.lo);
    std::swap(st.acc[0], st.acc[1]);
    std::fill(st.acc[1].begin(), st.acc[1].end(), 0.f);
    ++st.lo;
  }
}

// Adds the [C][P] gradient tile of output pixels tp to the accumulators of the band's rows.
inline void accumulate_tile(const float* tile, const GradOut& g, const Shape& S, const Tiling& T, const TilePos& tp,
                            ResampleState& st) {
  const Resample& rs = *T.rs;
  const int64_t Y = tp.hw0 / S.W, X0 = tp.hw0 % S.W, P = T.P, stride = S.W + T.P;
  const int64_t ys[2] = {rs.y0[Y], rs.y1[Y]};
  const float ls[2] = {rs.ly0[Y], rs.ly1[Y]};
  band_advance(st, g, S, T, std::min<int64_t>(ys[0], st.b));
  for (int k = 0; k < 2; ++k) {
    const int64_t y = ys[k];
    if (y < st.a || y >= st.b) continue;
    float* acc = st.acc[y - st.lo].data();
    const vf l = vsplat(ls[k]);
    for (int64_t c = 0; c < S.C; ++c) {
      float* o = acc + c * stride + X0;
      const float* in = tile + c * P;
      // padding pixels may hold anything: they land past column W, which is never read
      for (int64_t v = 0; v < P; v += kVL) vstore(o + v, vload(o + v) + l * vload(in + v));
    }
  }
}

// Runs body(tile position, tile index, owned) over the tiles of work items [i0, i1). Without
// resampling an item is a tile. With it, an item is a band of source rows of one image: its owned
// tiles are the output rows whose first source row is in the band (their losses and per-pixel
// outputs are the band's to write); with a gradient, the output rows whose second source row is in
// the band are computed again for the gradient alone (owned = false). `g` and `grad_sc` name the
// gradient and the scratch whose tile holds it; an op with two gradients names the second in `g2`
// and `grad_sc2`.
template <class Body>
void for_each_tile(const Shape& S, const Tiling& T, int64_t i0, int64_t i1, const GradOut& g, Scratch& grad_sc,
                   Body&& body, const GradOut& g2 = GradOut{}, Scratch* grad_sc2 = nullptr) {
  if (!T.rs) {
    for (int64_t t = i0; t < i1; ++t) body(tile_pos(S, T, t), t, true);
    return;
  }
  const Resample& rs = *T.rs;
  const std::pair<const GradOut*, Scratch*> grads[2] = {{&g, &grad_sc}, {&g2, grad_sc2}};
  const bool grad = g.data != nullptr || g2.data != nullptr;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t n = item / rs.bands_per_image;
    const int64_t a = (item % rs.bands_per_image) * rs.band_rows;
    const int64_t b = std::min(a + rs.band_rows, rs.h);
    for (const auto& [gk, sk] : grads)
      if (gk->data) band_begin(resample_state(*sk, S, T), S, T, n, a, b);
    for (int64_t Y = 0; Y < S.H; ++Y) {
      const bool owned = rs.y0[Y] >= a && rs.y0[Y] < b;
      if (!owned && !(grad && rs.y1[Y] >= a && rs.y1[Y] < b)) continue;
      for (int64_t s = 0; s < T.tiles_per_row; ++s) {
        const TilePos tp{n, Y * S.W + s * T.P, std::min(T.P, S.W - s * T.P)};
        body(tp, (n * S.H + Y) * T.tiles_per_row + s, owned);
      }
    }
    for (const auto& [gk, sk] : grads)  // the band's remaining rows
      if (gk->data) band_advance(resample_state(*sk, S, T), *gk, S, T, b);
  }
}
