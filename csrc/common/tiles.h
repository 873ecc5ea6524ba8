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

// kVL storage elements <-> one fp32 vector.
template <DType D>
SSF_INLINE vf load_vec(const typename Storage<D>::type* src) {
  if constexpr (D == DType::F32) {
    return vload(src);
  } else {
    vh h;
    std::memcpy(&h, src, sizeof h);
    return D == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
}

template <DType D>
SSF_INLINE void store_vec(typename Storage<D>::type* dst, vf v) {
  if constexpr (D == DType::F32) {
    vstore(dst, v);
  } else {
    const vh h = D == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
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

// Scratch buffers owned by one thread for a range of tiles.
struct Scratch {
  std::vector<float> tile;      // [C][P]
  std::vector<float> row;       // [C]
  std::vector<double> raw;      // [C] storage-typed staging (large enough for any dtype)
  std::vector<int64_t> off;     // [P] element offsets, logits
  std::vector<int64_t> off_out; // [P] element offsets, gradient
  std::vector<int64_t> off_map; // [P] element offsets, per-pixel maps
  Scratch(int64_t C, int64_t P)
      : tile(C * P), row(C), raw(C), off(P), off_out(P), off_map(P) {}
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
    // Class-contiguous rows (channels_last): transpose kVL pixels x kVL classes at a time.
    // The last class block is shifted back to end at C and overlaps the previous one.
    if (x.sC == 1 && C >= kVL) {
      for (; p0 + kVL <= np; p0 += kVL) {
        for (int64_t c0 = 0; c0 < C; c0 += kVL) {
          const int64_t cb = c0 + kVL <= C ? c0 : C - kVL;
          vf r[kVL];
          for (int i = 0; i < kVL; ++i) r[i] = load_vec<D>(base + off[p0 + i] + cb);
          transpose_block(r);
          for (int j = 0; j < kVL; ++j) vstore(tile + (cb + j) * P + p0, r[j]);
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
    if (g.sC == 1 && C >= kVL) {
      for (; p0 + kVL <= np; p0 += kVL) {
        for (int64_t c0 = 0; c0 < C; c0 += kVL) {
          const int64_t cb = c0 + kVL <= C ? c0 : C - kVL;
          vf r[kVL];
          for (int j = 0; j < kVL; ++j) r[j] = vload(tile + (cb + j) * P + p0);
          transpose_block(r);
          for (int i = 0; i < kVL; ++i) store_vec<D>(base + off[p0 + i] + cb, r[i]);
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

// Reads one element of a per-pixel map as int64 / float.
inline int64_t map_int(const PixelMap& m, int64_t o) {
  switch (m.dtype) {
    case DType::U8: return static_cast<const uint8_t*>(m.data)[o];
    case DType::Bool: return static_cast<const uint8_t*>(m.data)[o] != 0;
    case DType::I8: return static_cast<const int8_t*>(m.data)[o];
    case DType::I16: return static_cast<const int16_t*>(m.data)[o];
    case DType::I32: return static_cast<const int32_t*>(m.data)[o];
    case DType::I64: return static_cast<const int64_t*>(m.data)[o];
    default: return 0;
  }
}

inline float map_float(const PixelMap& m, int64_t o) {
  switch (m.dtype) {
    case DType::F32: return static_cast<const float*>(m.data)[o];
    case DType::F64: return (float)static_cast<const double*>(m.data)[o];
    case DType::F16: { float f; to_f32<DType::F16>(&f, static_cast<const uint16_t*>(m.data) + o, 1); return f; }
    case DType::BF16: { float f; to_f32<DType::BF16>(&f, static_cast<const uint16_t*>(m.data) + o, 1); return f; }
    case DType::Bool:
    case DType::U8: return (float)static_cast<const uint8_t*>(m.data)[o];
    default: return (float)map_int(m, o);
  }
}

// Offsets of the tile's pixels in a per-pixel map.
inline const int64_t* map_offsets(const PixelMap& m, const Shape& S, int64_t n, int64_t hw0, int64_t np,
                                  Scratch& sc) {
  pixel_offsets(sc.off_map.data(), n, hw0, np, S.W, m.sN, m.sH, m.sW);
  return sc.off_map.data();
}
