"""Deliberately bad Triton kernels for tests/test_gpu_check.py, compiled in a separate process
(the test session runs Triton in interpreter mode, which cannot compile for a GPU).

    python tests/gpu_check_cases.py   ->  JSON: {case: [problems found by the check]}
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from semiseg_fast.tools import gpu_check  # noqa: E402


@triton.jit
def good_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2.0, mask=mask)


@triton.jit
def spilling_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    # A BLOCK x BLOCK fp32 tile held by one warp (BLOCK*BLOCK/32 values per thread) with every
    # value needed again after two reductions: far more than 255 registers.
    r = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + r[:, None] * BLOCK + r[None, :])
    y = x * tl.sum(x, axis=0)[None, :] + tl.sum(x * x, axis=1)[:, None]
    y = y * tl.max(y, axis=0)[None, :] - tl.min(y, axis=1)[:, None] * x
    tl.store(y_ptr + r[:, None] * BLOCK + r[None, :], y)


@triton.jit
def broken_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + r)
    tl.store(y_ptr + r, tl.dot(x, x))  # tl.dot needs 2-D operands: a compile error


def check(kernel, args, **kwargs):
    launch = [("case", kernel, (1,), args, kwargs)]
    result = gpu_check.compile_job(gpu_check.jobs_for(launch, targets=(90,))[0])
    return gpu_check.judge(result, budgets={}), result


if __name__ == "__main__":
    x = torch.empty(64 * 64, device="meta")
    out = {}
    for name, kernel, args, kwargs in [
        ("good", good_kernel, (x, x, 4096), dict(BLOCK=256, num_warps=4)),
        ("spilling", spilling_kernel, (x, x), dict(BLOCK=64, num_warps=1)),
        ("broken", broken_kernel, (x, x), dict(BLOCK=64, num_warps=4)),
    ]:
        problems, result = check(kernel, args, **kwargs)
        out[name] = dict(problems=problems, regs=result.get("regs"), local=result.get("local"))
    print(json.dumps(out))
