// The kernels compiled for AVX-512 (F, BW, VL, DQ) + FMA; chosen at run time when the CPU has them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "../common/types.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
namespace ssf {
namespace avx512 {
#define SSF_VL 16
#define SSF_ISA_NAME "avx512"
#include "../common/kernels_impl.h"
#undef SSF_ISA_NAME
#undef SSF_VL
}  // namespace avx512
const KernelTable& kernels_avx512() { return avx512::table(); }
}  // namespace ssf
#pragma GCC pop_options
#else
namespace ssf {
// Not an x86-64 build: the baseline kernels are all there is.
const KernelTable& kernels_avx512() { return kernels_generic(); }
}  // namespace ssf
#endif
