// Moving tiles between tensors of any supported dtype and memory layout and an fp32 scratch
// tile laid out [C][P] (class-major), on which every kernel computes with SIMD vectors.
// Included inside an instruction-set namespace after simd.h; no include guard on purpose.

template <DType D> struct Storage;
template <> struct Storage<DType::F32> { using type = float; };
template <> struct Storage<DType::F16> { using type = uint16_t; };
template <> struct Storage<DType::BF16> { using type = uint16_t; };
template <> struct Storage<DType::F64> { using type = double; };

// dst[0:n] = float(src[0:n])
template <DType D>
inline void to_f32(float* dst, const typename Storage<D>::type* src, int64_t n) {
  if constexpr (D == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if constexpr (D == DType::F64) {
    for (int64_t i = 0; i < n; ++i) dst[i] = (float)src[i];
  } else {
    int64_t i = 0;
    for (; i + kVL <= n; i += kVL) {
      vh h;
      std::memcpy(&h, src + i, sizeof h);
      vstore(dst + i, D == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h));
    }
    if (i < n) {
      uint16_t buf[kVL] = {0};
      float out[kVL];
      std::memcpy(buf, src + i, (n - i) * sizeof(uint16_t));
      vh h;
      std::memcpy(&h, buf, sizeof h);
      vstore(out, D == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h));
      std::memcpy(dst + i, out, (n - i) * sizeof(float));
    }
  }
}

// dst[0:n] = storage(src[0:n]), rounding to nearest even
template <DType D>
inline void from_f32(typename Storage<D>::type* dst, const float* src, int64_t n) {
  if constexpr (D == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if constexpr (D == DType::F64) {
    for (int64_t i = 0; i < n; ++i) dst[i] = (double)src[i];
  } else {
    int64_t i = 0;
    for (; i + kVL <= n; i += kVL) {
      const vh h = D == DType::F16 ? f32_to_f16(vload(src + i)) : f32_to_bf16(vload(src + i));
      std::memcpy(dst + i, &h, sizeof h);
    }
    if (i < n) {
      float buf[kVL] = {0};
      std::memcpy(buf, src + i, (n - i) * sizeof(float));
      const vh h = D == DType::F16 ? f32_to_f16(vload(buf)) : f32_to_bf16(vload(buf));
      std::memcpy(dst + i, &h, (n - i) * sizeof(uint16_t));
    }
  }
}

// One fp32 vector F (kVL or kTW lanes) <-> as many storage elements.
template <DType D, class F = vf>
SSF_INLINE F load_vec(const typename Storage<D>::type* src) {
  F v;
  if constexpr (D == DType::F32) {
    std::memcpy(&v, src, sizeof v);
  } else {
    typename Lanes<sizeof(F) / 4>::h h;
    std::memcpy(&h, src, sizeof h);
    v = D == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
  return v;
}

template <DType D, class F = vf>
SSF_INLINE void store_vec(typename Storage<D>::type* dst, F v) {
  if constexpr (D == DType::F32) {
    std::memcpy(dst, &v, sizeof v);
  } else {
    const auto h = D == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
    std::memcpy(dst, &h, sizeof h);
  }
}

// Element offsets of pixels hw0 .. hw0 + np - 1 of image n.
inline void pixel_offsets(int64_t* off, int64_t n, int64_t hw0, int64_t np, int64_t W,
                          int64_t sN, int64_t sH, int64_t sW) {
  int64_t h = hw0 / W, w = hw0 % W;
  for (int64_t p = 0; p < np; ++p) {
    off[p] = n * sN + h * sH + w * sW;
    if (++w == W) { w = 0; ++h; }
  }
}

// True when pixel p of a tile lives at off[0] + p.
inline bool pixels_contiguous(int64_t H, int64_t W, int64_t sH, int64_t sW) {
  if (W > 1 && sW != 1) return false;
  return H == 1 || sH == (W > 1 ? W : 1);
}

struct ResampleState;  // resample.h

// Scratch buffers owned by one thread for a range of tiles.
struct Scratch {
  std::vector<float> tile;      // [C][P]
  std::vector<float> row;       // [C]
  std::vector<double> raw;      // [C] storage-typed staging (large enough for any dtype)
  std::vector<int64_t> off;     // [P] element offsets, logits
  std::vector<int64_t> off_out; // [P] element offsets, gradient
  std::vector<int64_t> off_map; // [P] element offsets, per-pixel maps
  std::vector<int64_t> map_values;  // [P] values read from a per-pixel map
  std::shared_ptr<ResampleState> resample;  // row caches and gradient rows of a resampling op
  Scratch(int64_t C, int64_t P)
      : tile(C * P), row(C), raw(C), off(P), off_out(P), off_map(P), map_values(P) {}
};

template <DType D>
inline void load_tile_t(float* tile, int64_t P, int64_t np, int64_t C, const Logits& x, const int64_t* off,
                        bool contig, Scratch& sc) {
  using T = typename Storage<D>::type;
  const T* base = static_cast<const T*>(x.data);
  if (contig) {
    for (int64_t c = 0; c < C; ++c) {
      float* dst = tile + c * P;
      to_f32<D>(dst, base + off[0] + c * x.sC, np);
      for (int64_t p = np; p < P; ++p) dst[p] = 0.f;
    }
    return;
  }
  int64_t p0 = 0;
  if constexpr (D != DType::F64) {
    // Class-contiguous rows (channels_last): transpose kTW pixels x kTW classes at a time.
    // The last class block is shifted back to end at C and overlaps the previous one.
    if (x.sC == 1 && C >= kTW) {
      for (; p0 + kTW <= np; p0 += kTW) {
        for (int64_t c0 = 0; c0 < C; c0 += kTW) {
          const int64_t cb = c0 + kTW <= C ? c0 : C - kTW;
          vt r[kTW];
          for (int i = 0; i < kTW; ++i) r[i] = load_vec<D, vt>(base + off[p0 + i] + cb);
          transpose_block(r);
          for (int j = 0; j < kTW; ++j) std::memcpy(tile + (cb + j) * P + p0, &r[j], sizeof(vt));
        }
      }
    }
  }
  T* raw = reinterpret_cast<T*>(sc.raw.data());
  float* row = sc.row.data();
  for (int64_t p = p0; p < np; ++p) {
    const T* src = base + off[p];
    if (x.sC == 1) {
      to_f32<D>(row, src, C);
    } else {
      for (int64_t c = 0; c < C; ++c) raw[c] = src[c * x.sC];
      to_f32<D>(row, raw, C);
    }
    for (int64_t c = 0; c < C; ++c) tile[c * P + p] = row[c];
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t p = np; p < P; ++p) tile[c * P + p] = 0.f;
}

// Loads pixels hw0 .. hw0+np-1 of image n into the [C][P] tile; padding pixels are 0.
inline void load_tile(float* tile, const Shape& S, int64_t P, int64_t n, int64_t hw0, int64_t np,
                      const Logits& x, Scratch& sc) {
  pixel_offsets(sc.off.data(), n, hw0, np, S.W, x.sN, x.sH, x.sW);
  const bool contig = pixels_contiguous(S.H, S.W, x.sH, x.sW);
  switch (x.dtype) {
    case DType::F32: load_tile_t<DType::F32>(tile, P, np, S.C, x, sc.off.data(), contig, sc); break;
    case DType::F16: load_tile_t<DType::F16>(tile, P, np, S.C, x, sc.off.data(), contig, sc); break;
    case DType::BF16: load_tile_t<DType::BF16>(tile, P, np, S.C, x, sc.off.data(), contig, sc); break;
    case DType::F64: load_tile_t<DType::F64>(tile, P, np, S.C, x, sc.off.data(), contig, sc); break;
    default: break;
  }
}

template <DType D>
inline void store_tile_t(const float* tile, int64_t P, int64_t np, int64_t C, const GradOut& g, const int64_t* off,
                         bool contig, Scratch& sc) {
  using T = typename Storage<D>::type;
  T* base = static_cast<T*>(g.data);
  if (contig) {
    for (int64_t c = 0; c < C; ++c) from_f32<D>(base + off[0] + c * g.sC, tile + c * P, np);
    return;
  }
  int64_t p0 = 0;
  if constexpr (D != DType::F64) {
    if (g.sC == 1 && C >= kTW) {
      for (; p0 + kTW <= np; p0 += kTW) {
        for (int64_t c0 = 0; c0 < C; c0 += kTW) {
          const int64_t cb = c0 + kTW <= C ? c0 : C - kTW;
          vt r[kTW];
          for (int j = 0; j < kTW; ++j) std::memcpy(&r[j], tile + (cb + j) * P + p0, sizeof(vt));
          transpose_block(r);
          for (int i = 0; i < kTW; ++i) store_vec<D, vt>(base + off[p0 + i] + cb, r[i]);
        }
      }
    }
  }
  T* raw = reinterpret_cast<T*>(sc.raw.data());
  float* row = sc.row.data();
  for (int64_t p = p0; p < np; ++p) {
    for (int64_t c = 0; c < C; ++c) row[c] = tile[c * P + p];
    T* dst = base + off[p];
    if (g.sC == 1) {
      from_f32<D>(dst, row, C);
    } else {
      from_f32<D>(raw, row, C);
      for (int64_t c = 0; c < C; ++c) dst[c * g.sC] = raw[c];
    }
  }
}

inline void store_tile(const float* tile, const Shape& S, int64_t P, int64_t n, int64_t hw0, int64_t np,
                       const GradOut& g, Scratch& sc) {
  pixel_offsets(sc.off_out.data(), n, hw0, np, S.W, g.sN, g.sH, g.sW);
  const bool contig = pixels_contiguous(S.H, S.W, g.sH, g.sW);
  switch (g.dtype) {
    case DType::F32: store_tile_t<DType::F32>(tile, P, np, S.C, g, sc.off_out.data(), contig, sc); break;
    case DType::F16: store_tile_t<DType::F16>(tile, P, np, S.C, g, sc.off_out.data(), contig, sc); break;
    case DType::BF16: store_tile_t<DType::BF16>(tile, P, np, S.C, g, sc.off_out.data(), contig, sc); break;
    case DType::F64: store_tile_t<DType::F64>(tile, P, np, S.C, g, sc.off_out.data(), contig, sc); break;
    default: break;
  }
}

// Per-pixel maps (targets, weights, masks) of any dtype and strides, read for a whole tile at
// once: the dtype switch is outside the pixel loop, and contiguous rows are read directly.
template <class T, class Out, class Conv>
inline void read_map(Out* dst, const PixelMap& m, const Shape& S, int64_t n, int64_t hw0, int64_t np, Scratch& sc,
                     Conv conv) {
  const T* base = static_cast<const T*>(m.data);
  if (pixels_contiguous(S.H, S.W, m.sH, m.sW)) {
    const T* src = base + n * m.sN + (hw0 / S.W) * m.sH + (hw0 % S.W) * m.sW;
    for (int64_t p = 0; p < np; ++p) dst[p] = conv(src[p]);
  } else {
    pixel_offsets(sc.off_map.data(), n, hw0, np, S.W, m.sN, m.sH, m.sW);
    for (int64_t p = 0; p < np; ++p) dst[p] = conv(base[sc.off_map[p]]);
  }
}

// dst[p] = map value as int64 (bool as 0/1), for the np pixels from hw0 of image n.
inline void load_map_ints(int64_t* dst, const PixelMap& m, const Shape& S, int64_t n, int64_t hw0, int64_t np,
                          Scratch& sc) {
  auto id = [](auto v) { return (int64_t)v; };
  switch (m.dtype) {
    case DType::Bool: read_map<uint8_t>(dst, m, S, n, hw0, np, sc, [](uint8_t v) { return (int64_t)(v != 0); }); break;
    case DType::U8: read_map<uint8_t>(dst, m, S, n, hw0, np, sc, id); break;
    case DType::I8: read_map<int8_t>(dst, m, S, n, hw0, np, sc, id); break;
    case DType::I16: read_map<int16_t>(dst, m, S, n, hw0, np, sc, id); break;
    case DType::I32: read_map<int32_t>(dst, m, S, n, hw0, np, sc, id); break;
    case DType::I64: read_map<int64_t>(dst, m, S, n, hw0, np, sc, id); break;
    default: for (int64_t p = 0; p < np; ++p) dst[p] = 0;
  }
}

// dst[p] = map value as float.
inline void load_map_floats(float* dst, const PixelMap& m, const Shape& S, int64_t n, int64_t hw0, int64_t np,
                            Scratch& sc) {
  auto f = [](auto v) { return (float)v; };
  auto half = [](uint16_t v) { float o; to_f32<DType::F16>(&o, &v, 1); return o; };
  auto bf = [](uint16_t v) { float o; to_f32<DType::BF16>(&o, &v, 1); return o; };
  switch (m.dtype) {
    case DType::F32: read_map<float>(dst, m, S, n, hw0, np, sc, f); break;
    case DType::F64: read_map<double>(dst, m, S, n, hw0, np, sc, f); break;
    case DType::F16: read_map<uint16_t>(dst, m, S, n, hw0, np, sc, half); break;
    case DType::BF16: read_map<uint16_t>(dst, m, S, n, hw0, np, sc, bf); break;
    case DType::Bool:
    case DType::U8: read_map<uint8_t>(dst, m, S, n, hw0, np, sc, f); break;
    default: {
      std::vector<int64_t> tmp(np);
      load_map_ints(tmp.data(), m, S, n, hw0, np, sc);
      for (int64_t p = 0; p < np; ++p) dst[p] = (float)tmp[p];
    }
  }
}
