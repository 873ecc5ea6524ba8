// Float math on GCC vector extensions (SSF_VL lanes). This file is included inside an
// instruction-set namespace (see kernels_impl.h), once per translation unit, so the same
// source becomes AVX-512, AVX2+FMA or baseline x86-64 code in one object each.
// It has no include guard and includes nothing on purpose.

// SSF_VL lanes: 16 in the AVX-512 builds, 8 in the AVX2 one, 4 for the SSE2 baseline (wider
// vectors there are split by the compiler into much slower code).
constexpr int kVL = SSF_VL;

// Vector types of N lanes; the kernels compute on kVL lanes, the channels_last transposes on kTW.
template <int N>
struct Lanes {
  typedef float f __attribute__((vector_size(4 * N)));
  typedef int32_t i __attribute__((vector_size(4 * N)));
  typedef uint32_t u __attribute__((vector_size(4 * N)));
  typedef uint16_t h __attribute__((vector_size(2 * N)));
};
typedef Lanes<kVL>::f vf;
typedef Lanes<kVL>::i vi;
typedef Lanes<kVL>::u vu;
typedef Lanes<kVL>::h vh;

#define SSF_INLINE inline __attribute__((always_inline))

template <class To, class From>
SSF_INLINE To bit_cast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast size");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

SSF_INLINE vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
SSF_INLINE void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
SSF_INLINE vi vloadi(const int32_t* p) { vi v; std::memcpy(&v, p, sizeof v); return v; }
SSF_INLINE void vstorei(int32_t* p, vi v) { std::memcpy(p, &v, sizeof v); }
SSF_INLINE vf vsplat(float x) { return vf{} + x; }
SSF_INLINE vi vsplati(int32_t x) { return vi{} + x; }
SSF_INLINE vf vselect(vi m, vf a, vf b) { return m ? a : b; }
SSF_INLINE vi vselecti(vi m, vi a, vi b) { return m ? a : b; }
SSF_INLINE bool vany(vi m) {
  int32_t r = 0;
  for (int i = 0; i < kVL; ++i) r |= m[i];
  return r != 0;
}

// max(lo, x) that returns x when x is NaN (the x86 max instruction's operand order).
SSF_INLINE vf vmax_keep_nan(vf lo, vf x) {
// (GCC's target pragma does not define __AVX2__ and the like in C++: the lane count tells the build.)
#if (defined(__x86_64__) || defined(_M_X64)) && SSF_VL == 16
  return (vf)_mm512_max_ps((__m512)lo, (__m512)x);
#elif (defined(__x86_64__) || defined(_M_X64)) && SSF_VL == 8
  return (vf)_mm256_max_ps((__m256)lo, (__m256)x);
#elif (defined(__x86_64__) || defined(_M_X64)) && SSF_VL == 4
  return (vf)_mm_max_ps((__m128)lo, (__m128)x);
#else
  return vselect(x < lo, lo, x);
#endif
}

// exp(x) for x <= 0 (the kernels only exponentiate x - max), to about 1 ulp. Results below
// the smallest normal float flush to 0; NaN propagates.
// Range reduction x = n ln2 + r (ln2 split in two), then a degree-7 polynomial for exp(r).
SSF_INLINE vf vexp(vf x) {
  const float lo = -87.33654f;  // exp(lo) ~ FLT_MIN
  const vi under = x < lo;
  const vf xc = vmax_keep_nan(vsplat(lo), x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf kf = xc * 1.44269504088896341f + magic;
  const vf n = kf - magic;
  const vi ni = bit_cast<vi>(kf) - bit_cast<vi>(vsplat(magic));
  vf r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf y = vsplat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const vf scale = bit_cast<vf>((ni + 127) << 23);
  return vselect(under, vf{}, y * scale);
}

// Natural log for x > 0 (x = +inf gives +inf, NaN propagates), about 1 ulp.
SSF_INLINE vf vlog(vf x) {
  const vi bits = bit_cast<vi>(x);
  vf e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, vf);
  vf m = bit_cast<vf>((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const vi small = m < 0.707106781186547524f;
  e = vselect(small, e - 1.0f, e);
  m = vselect(small, m + m - 1.0f, m - 1.0f);
  const vf z = m * m;
  vf y = vsplat(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  vf r = m + y + e * 0.693359375f;
  r = vselect(x == __builtin_inff(), x, r);
  r = vselect(x != x, x, r);
  return r;
}

// log(1 + x) for x >= 0, accurate for tiny x: log(u) corrected by the rounding of u = 1 + x.
SSF_INLINE vf vlog1p(vf x) {
  const vf u = x + 1.0f;
  const vf d = u - 1.0f;
  const vf corr = vselect(d == 0.0f, vf{}, (x - d) / u);
  const vf r = vlog(u) + corr;
  return vselect(d == 0.0f, x, r);
}

// ---- conversions between storage types and fp32, for any lane count ----

template <class H>
SSF_INLINE auto bf16_to_f32(H h) {
  typedef Lanes<sizeof(H) / 2> L;
  const typename L::u w = __builtin_convertvector(h, typename L::u);
  return bit_cast<typename L::f>(w << 16);
}

// Round to nearest even, NaN to the canonical 0x7fc0 (as torch's conversion).
template <class F>
SSF_INLINE auto f32_to_bf16_int(F f) {
  typedef Lanes<sizeof(F) / 4> L;
  const typename L::u b = bit_cast<typename L::u>(f);
  const typename L::u rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const typename L::u nan = typename L::u{} + 0x7fc0u;
  const typename L::u out = (f != f) ? nan : rounded;
  return __builtin_convertvector(out, typename L::h);
}

template <class F>
SSF_INLINE auto f32_to_bf16(F f) {
#if defined(SSF_AVX512BF16)  // defined by the AVX512-BF16 build
  if constexpr (sizeof(F) == 64) {
    // One instruction rounds to nearest even and packs, but it reads subnormal inputs as zero and
    // keeps NaN payloads: those lanes (rare: a gradient below 1.2e-38, a NaN) take the integer path.
    const __m512 v = (__m512)f;
    const __mmask16 odd = _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(1.17549435e-38f), _CMP_NGE_UQ) &
                          _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    if (__builtin_expect(odd != 0, 0)) return f32_to_bf16_int(f);
    return bit_cast<typename Lanes<16>::h>(_mm512_cvtneps_pbh(v));
  }
#endif
  return f32_to_bf16_int(f);
}

template <class H>
SSF_INLINE auto f16_to_f32(H h) {
  typedef Lanes<sizeof(H) / 2> L;
  typedef typename L::u U;
  const U w = __builtin_convertvector(h, U);
  const U o = (w & 0x7fffu) << 13;
  U r = bit_cast<U>(bit_cast<typename L::f>(o) * 5.192296858534828e+33f);  // * 2^112 re-biases, handles subnormals
  r = ((w & 0x7c00u) == 0x7c00u) ? (r | 0x7f800000u) : r;                     // inf / nan
  return bit_cast<typename L::f>(r | ((w & 0x8000u) << 16));
}

template <class F>
SSF_INLINE auto f32_to_f16(F f) {
  typedef Lanes<sizeof(F) / 4> L;
  typedef typename L::u U;
  const U b = bit_cast<U>(f);
  const U sign = b & 0x80000000u;
  const U a = b ^ sign;
  // overflow / inf / nan
  const U big = (a > 0x7f800000u) ? (U{} + 0x7e00u) : (U{} + 0x7c00u);
  // subnormal half: let the fp32 adder round to nearest even
  const float denorm_magic = bit_cast<float>(uint32_t(((127 - 15) + (23 - 10) + 1) << 23));
  const U sub = bit_cast<U>(bit_cast<typename L::f>(a) + denorm_magic) - bit_cast<uint32_t>(denorm_magic);
  // normal half: re-bias and round to nearest even
  const U norm = (a + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  U o = (a >= (uint32_t)(143u << 23)) ? big : ((a < (uint32_t)(113u << 23)) ? sub : norm);
  o = o | (sign >> 16);
  return __builtin_convertvector(o, typename L::h);
}

// ---- in-register transpose of a kTW x kTW block: r[i][j] -> r[j][i] ----

// The channels_last tiles transpose 8 x 8 blocks even in the 16-lane builds: a 16 x 16 block costs
// more shuffles per element, and for C = 19 or 21 its class blocks overlap more.
constexpr int kTW = SSF_VL < 8 ? SSF_VL : 8;
typedef Lanes<kTW>::f vt;

SSF_INLINE void transpose_block(vt* r) {
  typedef Lanes<kTW>::i idx;
#if SSF_VL >= 8
  vt t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], idx{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], idx{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], idx{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], idx{2, 3, 10, 11, 6, 7, 14, 15});
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], idx{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], idx{2, 3, 10, 11, 6, 7, 14, 15});
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shuffle(u[i], u[i + 4], idx{0, 1, 2, 3, 8, 9, 10, 11});
    r[i + 4] = __builtin_shuffle(u[i], u[i + 4], idx{4, 5, 6, 7, 12, 13, 14, 15});
  }
#elif SSF_VL == 4
  const vt t0 = __builtin_shuffle(r[0], r[1], idx{0, 4, 1, 5});
  const vt t1 = __builtin_shuffle(r[0], r[1], idx{2, 6, 3, 7});
  const vt t2 = __builtin_shuffle(r[2], r[3], idx{0, 4, 1, 5});
  const vt t3 = __builtin_shuffle(r[2], r[3], idx{2, 6, 3, 7});
  r[0] = __builtin_shuffle(t0, t2, idx{0, 1, 4, 5});
  r[1] = __builtin_shuffle(t0, t2, idx{2, 3, 6, 7});
  r[2] = __builtin_shuffle(t1, t3, idx{0, 1, 4, 5});
  r[3] = __builtin_shuffle(t1, t3, idx{2, 3, 6, 7});
#else
#error "SSF_VL must be 4, 8 or 16"
#endif
}
