// The kernels compiled for baseline x86-64 (SSE2) or whatever the target's baseline is.
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

namespace ssf {
namespace generic {
#define SSF_VL 4
#define SSF_ISA_NAME "generic"
#include "../common/kernels_impl.h"
#undef SSF_ISA_NAME
#undef SSF_VL
}  // namespace generic
const KernelTable& kernels_generic() { return generic::table(); }
}  // namespace ssf
