import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.train.methods.base import mix as _mix
from semiseg_fast.train.methods.base import mixed_pseudo_labels as _mixed_pseudo_labels


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fixmatch_targets_from_mixed_statistics_equal_the_mixed_logits_loss(layout):
    """The fixmatch step mixes (label, confidence) maps instead of the teacher's logits: loss and
    gradient must be bit-identical to fixmatch_loss on CutMixed teacher logits."""
    g = torch.Generator().manual_seed(0)
    teacher = (torch.randn(6, 5, 12, 14, generator=g) * 4).contiguous(memory_format=layout)
    student = (torch.randn(6, 5, 12, 14, generator=g) * 2).contiguous(memory_format=layout).requires_grad_()
    box = sf.mixing.cutmix_masks(6, 12, 14, g, p=1.0)
    pad = torch.rand(6, 12, 14, generator=g) < 0.1
    expected = sf.fixmatch_loss(student, _mix(box, teacher), 0.7, ignore_mask=_mix(box, pad))
    (g_expected,) = torch.autograd.grad(expected, student)
    label, conf = _mixed_pseudo_labels(box, teacher)
    valid = ~_mix(box, pad)
    target = label.masked_fill(~(valid & (conf >= 0.7)), 255)
    loss = sf.pseudo_label_cross_entropy(student, target, normalizer=valid.sum())
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.equal(loss, expected) and torch.equal(grad, g_expected)
