import torch
from torch import nn

import semiseg_fast as sf


def test_pseudo_label_cross_entropy_is_a_drop_in_for_cross_entropy_loss():
    x = torch.randn(2, 21, 9, 7, requires_grad=True)
    t = torch.randint(0, 21, (2, 9, 7))
    t[0, :3] = 255
    ours = sf.PseudoLabelCrossEntropy()(x, t)
    g = torch.autograd.grad(ours, x)[0]
    theirs = nn.CrossEntropyLoss(ignore_index=255)(x, t)
    g_ref = torch.autograd.grad(theirs, x)[0]
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(g, g_ref)
    assert "ignore_index=255" in repr(sf.PseudoLabelCrossEntropy())


def test_fixmatch_loss_module_records_mask_ratio():
    crit = sf.FixMatchLoss(threshold=0.5)
    s = torch.randn(2, 5, 4, 4, requires_grad=True)
    t = torch.randn(2, 5, 4, 4) * 5
    loss = crit(s, t)
    expected, ratio = sf.fixmatch_loss(s, t, 0.5, return_mask_ratio=True)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(crit.last_mask_ratio, ratio)
