"""Between forward and backward the fused losses hold one logits-sized tensor (the gradient, fp32
for bf16 logits) plus per-pixel buffers. The reference keeps fp32 log-probabilities and more."""

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.base import saved_grad_dtype
from semiseg_fast.utils import saved_tensor_bytes
from tests.helpers import FUSED

N, C, H, W = 2, 21, 17, 19


def grad_bytes(x):
    """The gradient a fused loss keeps: fp32 for fp16/bf16 logits, so that backward rounds once."""
    return x.numel() * saved_grad_dtype(x.dtype).itemsize


def budget(x):
    return grad_bytes(x) + N * H * W * 16


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_losses_keep_only_the_gradient(backend, dtype):
    s = (torch.randn(N, C, H, W) * 3).to(dtype).requires_grad_()
    t = (torch.randn(N, C, H, W) * 6).to(dtype)
    target = torch.randint(0, C, (N, H, W), dtype=torch.uint8)
    with sf.backend(backend):
        _, fm = saved_tensor_bytes(lambda: sf.fixmatch_loss(s, t, 0.9))
        _, ce = saved_tensor_bytes(lambda: sf.pseudo_label_cross_entropy(s, target, weight=torch.rand(N, H, W)))
    with sf.backend("reference"):
        _, ref = saved_tensor_bytes(lambda: sf.fixmatch_loss(s, t, 0.9))
    assert fm <= budget(s) and ce <= budget(s)
    assert fm >= grad_bytes(s)  # the gradient itself is kept
    assert ref > fm  # the reference keeps fp32 log-probabilities and more
