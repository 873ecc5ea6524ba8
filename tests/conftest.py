"""Test setup: without a GPU the Triton kernels run under the interpreter on CPU tensors."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import semiseg_fast  # noqa: E402,F401  (after TRITON_INTERPRET is set)


def pytest_report_header(config):
    from semiseg_fast._backend import cpp_available, triton_available

    isa = torch.ops.semiseg_fast._cpp_kernel_isa("") if cpp_available() else "not built"
    return (
        f"semiseg_fast: cpp kernels={isa}, triton={'yes' if triton_available() else 'no'}, "
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}, torch threads={torch.get_num_threads()}"
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
