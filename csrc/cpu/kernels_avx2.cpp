// The kernels compiled for AVX2 + FMA + F16C; chosen at run time when the CPU has them.
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
#pragma GCC target("avx2,fma,f16c")
namespace ssf {
namespace avx2 {
#define SSF_VL 8
#define SSF_ISA_NAME "avx2"
#include "../common/kernels_impl.h"
#undef SSF_ISA_NAME
#undef SSF_VL
}  // namespace avx2
const KernelTable& kernels_avx2() { return avx2::table(); }
}  // namespace ssf
#pragma GCC pop_options
#else
namespace ssf {
// Not an x86-64 build: the baseline kernels are all there is.
const KernelTable& kernels_avx2() { return kernels_generic(); }
}  // namespace ssf
#endif
