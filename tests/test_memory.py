"""Between forward and backward the fused losses hold one logits-sized tensor (the gradient)
plus per-pixel buffers. The reference keeps fp32 log-probabilities: as much for fp32 logits,
twice as much for bf16 ones."""

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.utils import saved_tensor_bytes
from tests.helpers import FUSED

N, C, H, W = 2, 21, 17, 19


def budget(x):
    return x.numel() * x.element_size() + N * H * W * 16


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
    assert fm >= s.numel() * s.element_size()  # the gradient itself is kept
    if dtype == torch.bfloat16:  # the reference keeps fp32 log-probabilities of bf16 logits
        assert ref > 1.8 * fm
