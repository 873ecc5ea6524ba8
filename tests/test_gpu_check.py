"""The ahead-of-time GPU check (semiseg_fast.tools.gpu_check): it catches planted compile errors and
spills, covers every kernel of the library, and its occupancy model and report behave."""

import json
import os
import subprocess
import sys

import torch

from semiseg_fast.tools import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_planted_spill_and_compile_error_fail_the_check():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "gpu_check_cases.py")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cases = json.loads(out.strip().splitlines()[-1])
    assert cases["good"]["problems"] == [] and cases["good"]["local"] == 0
    assert any("local memory" in p for p in cases["spilling"]["problems"])
    assert any(p.startswith("does not compile") for p in cases["broken"]["problems"])


def test_sweep_launches_every_kernel_of_the_library():
    import importlib
    import pkgutil

    import semiseg_fast.triton as pkg

    kernels = set()
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"semiseg_fast.triton.{mod.name}")
        kernels |= {name for name in vars(m) if name.endswith("_kernel")}
    launched = {
        kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__ for _, kernel, _, _, _ in gpu_check.sweep()
    }
    assert kernels and kernels <= launched, kernels - launched


def test_sweep_covers_dtypes_layouts_and_both_class_regimes():
    labels = {label for label, *_ in gpu_check.sweep()}
    for needle in ("float32", "float16", "bfloat16", "nchw", "channels_last", "C=21 ", "C=1024 ", "options"):
        assert any(needle in lab for lab in labels), needle


def test_judge_applies_budget_and_local_memory():
    ok = dict(kernel="k", error=None, regs=64, local=0, stack=0)
    assert gpu_check.judge(ok, {"k": 80}) == []
    assert "registers > budget 48" in gpu_check.judge(ok, {"k": 48})[0]
    assert "local memory" in gpu_check.judge(dict(ok, stack=8), {"k": 80})[0]
    assert "does not compile" in gpu_check.judge(dict(ok, error="Boom"), {})[0]


def test_occupancy_model():
    assert gpu_check.occupancy_h100(32, 8, 0) == 1.0
    assert gpu_check.occupancy_h100(80, 8, 0) == 3 * 8 / 64
    assert gpu_check.occupancy_h100(255, 4, 0) == 2 * 4 / 64
    assert gpu_check.occupancy_h100(32, 8, 100 * 1024) == 2 * 8 / 64  # shared memory bound


def test_results_section_is_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nbenchmarks here\n")
    sec = lambda body: f"{gpu_check.RESULTS_BEGIN}\n{body}\n{gpu_check.RESULTS_END}"
    gpu_check.write_results_section(sec("first"), str(path))
    gpu_check.write_results_section(sec("second"), str(path))
    text = path.read_text()
    assert text.startswith("# Results") and "benchmarks here" in text
    assert "second" in text and "first" not in text and text.count(gpu_check.RESULTS_BEGIN) == 1


def test_roofline_bytes():
    n, c, h, w = 16, 21, 513, 513
    logits = n * c * h * w * 2
    # student and teacher read, the mask read, the fp32 gradient written
    assert gpu_check.minimal_bytes("fixmatch (fwd+grad)", (n, c, h, w)) == 4 * logits + n * h * w
    assert torch.isfinite(torch.tensor(gpu_check.minimal_bytes("pixel_stats", (n, c, h, w)) / gpu_check.H100_BANDWIDTH))
