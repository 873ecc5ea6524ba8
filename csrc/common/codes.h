// The reduction and normalizer codes the ops pass to the kernels. Their one definition is
// semiseg_fast/base/codes.py; these mirror it, and tests/test_codes.py checks that they agree.
#pragma once

namespace ssf {

enum Reduction { kNone = 0, kMean = 1, kSum = 2 };

// kTensor (a 0-dim tensor normalizer) is resolved in Python and never reaches a C++ kernel.
enum Normalizer { kValid = 0, kWeighted = 1, kTotal = 2, kValue = 3, kConfident = 4, kTensor = 5 };

}  // namespace ssf
