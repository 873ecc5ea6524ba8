import numpy as np
import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from semiseg_fast.reference import u2pl as ref
from semiseg_fast.u2pl import ContrastiveDraws, alpha_t, drop_percent
from tests.u2pl.test_unsupervised import teacher_with_separated_entropies

C, D, H, W, h, w = 5, 8, 17, 17, 5, 5
BL, BU, Q, NEG = 2, 2, 8, 4


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    pred_l = torch.randn(BL, C, H, W, generator=g, requires_grad=True)
    label_l = torch.randint(0, C, (BL, H, W), generator=g)
    label_l[:, :2] = 255
    pred_u = torch.randn(BU, C, H, W, generator=g, requires_grad=True)
    teacher_u = teacher_with_separated_entropies(BU, C, H, W, seed=seed)
    pseudo_u = teacher_u.argmax(1)
    rep = torch.randn(BL + BU, D, h, w, generator=g, requires_grad=True)
    rep_t = torch.randn(BL + BU, D, h, w, generator=g)
    prob_t = torch.softmax(torch.randn(BL + BU, C, h, w, generator=g) * 2, 1)
    return pred_l, label_l, pred_u, pseudo_u, teacher_u, rep, rep_t, prob_t


def official_composition(
    pred_l, label_l, pred_u, pseudo_u, teacher_u, rep, rep_t, prob_t, epoch, epochs, bank, draws, quirks
):
    """train_semi.py's loss block, from the official transcription and NumPy thresholds."""
    sup = F.cross_entropy(pred_l, label_l, ignore_index=255)
    percent = drop_percent(epoch, epochs)
    unsup = ref.unsupervised_loss(pred_u, pseudo_u, percent, teacher_u)
    at = alpha_t(epoch, epochs)
    ent = ref.official_entropy(teacher_u)
    valid = pseudo_u != 255
    vals = ent[valid].numpy().astype(np.float64)
    low_t, high_t = np.percentile(vals, at), np.percentile(vals, 100 - at)
    low_u = ent.le(torch.tensor(low_t, dtype=torch.float32)) & valid
    high_u = ent.ge(torch.tensor(high_t, dtype=torch.float32)) & valid
    small = lambda t: F.interpolate(t[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    rel = small(torch.cat([label_l != 255, low_u])).bool()
    unrel = small(torch.cat([label_l != 255, high_u])).bool()
    labels = small(torch.cat([label_l, pseudo_u])).long()
    isl = torch.tensor([True] * BL + [False] * BU)
    contra = ref.contrastive_loss(
        rep,
        rep_t,
        prob_t,
        labels,
        rel,
        unrel,
        isl,
        bank,
        {k: draws.anchors[k] for k in range(C)},
        {k: draws.negatives[k] for k in range(C)},
        low_rank=1,
        high_rank=4,
        num_queries=Q,
        num_negatives=NEG,
        official_quirks=quirks,
    )
    return sup + unsup + 0.1 * contra


@pytest.mark.parametrize("official_quirks", [False, True])
def test_matches_the_official_training_step(official_quirks):
    epochs = 4
    crit = sf.U2PLLoss(
        C,
        epochs,
        rep_dim=D,
        low_rank=1,
        high_rank=4,
        num_queries=Q,
        num_negatives=NEG,
        bank_capacity=30,
        first_class_capacity=40,
        official_quirks=official_quirks,
    )
    official_bank = ref.MemoryBank(C, D, [40] + [30] * (C - 1))
    for epoch in range(epochs):
        data = batch(epoch)
        g = torch.Generator().manual_seed(epoch)
        draws = ContrastiveDraws(
            torch.randint(0, 10**6, (C, Q), generator=g), torch.randint(0, 10**6, (C, Q * NEG), generator=g)
        )
        out = crit(*data[:5], epoch, rep=data[5], rep_teacher=data[6], prob_teacher=data[7], draws=draws)
        grads = torch.autograd.grad(out.total, [data[0], data[2], data[5]])
        expected = official_composition(*data, epoch, epochs, official_bank, draws, official_quirks)
        ref_grads = torch.autograd.grad(expected, [data[0], data[2], data[5]])
        torch.testing.assert_close(out.total, expected, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        assert out.drop_percent == drop_percent(epoch, epochs) and out.alpha_t == alpha_t(epoch, epochs)


def test_sup_only_epochs_and_no_contrastive():
    data = batch()
    crit = sf.U2PLLoss(C, 10, rep_dim=D, sup_only_epochs=1, low_rank=1, high_rank=4)
    out = crit(*data[:5], 0, rep=data[5], rep_teacher=data[6], prob_teacher=data[7])
    assert out.unsupervised == 0 and out.contrastive == 0
    torch.testing.assert_close(out.total, F.cross_entropy(data[0], data[1], ignore_index=255))
    plain = sf.U2PLLoss(C, 10, contrastive=False)
    out = plain(*data[:5], 3)
    assert out.contrastive == 0 and out.unsupervised > 0 and plain.bank is None


def test_bank_is_saved_with_the_module():
    data = batch()
    crit = sf.U2PLLoss(C, 10, rep_dim=D, low_rank=1, high_rank=4, num_queries=Q, num_negatives=NEG)
    crit(*data[:5], 2, rep=data[5], rep_teacher=data[6], prob_teacher=data[7])
    state = crit.state_dict()
    assert "bank.keys" in state and int(state["bank.length"].sum()) > 0


def test_teacher_statistics_instead_of_logits_give_the_same_step():
    data = batch()
    outs = []
    for teacher in (data[4], sf.pixel_stats(data[4]), sf.pixel_stats(data[4]).entropy):
        crit = sf.U2PLLoss(C, 10, rep_dim=D, low_rank=1, high_rank=4, num_queries=Q, num_negatives=NEG)
        out = crit(
            *data[:4],
            teacher,
            2,
            rep=data[5],
            rep_teacher=data[6],
            prob_teacher=data[7],
            generator=torch.Generator().manual_seed(0),
        )
        outs.append(out)
    for out in outs[1:]:
        assert torch.equal(out.total, outs[0].total) and torch.equal(out.unsupervised, outs[0].unsupervised)


def test_unlabeled_inputs_are_checked_by_name():
    pred_l, label_l, pred_u, pseudo_u, teacher_u = batch()[:5]
    crit = sf.U2PLLoss(C, 10, contrastive=False)
    with pytest.raises(ValueError, match="pseudo_u: expected shape"):
        crit(pred_l, label_l, pred_u, pseudo_u[:, :-1], teacher_u, 2)
    with pytest.raises(ValueError, match="teacher_u: expected the shape of pred_u"):
        crit(pred_l, label_l, pred_u, pseudo_u, teacher_u[..., :-1], 2)


def test_rank_settings_that_select_nothing_are_refused():
    with pytest.raises(ValueError, match="low_rank: expected < num_classes=3, got 3"):
        sf.U2PLLoss(3, 10)


@pytest.mark.parametrize("supervised", ["ours", "plain"])
def test_size_gives_the_step_of_the_upsampled_logits(supervised):
    """size=(H, W): the decoder's logits (and the teacher's) at their own resolution, labels at (H, W):
    the step of the upsampled logits, the contrastive term's labels still downsampled from (H, W);
    a supervised loss of the user's own gets the logits upsampled."""
    pred_l, label_l, _, pseudo_u, _, rep, rep_t, prob_t = batch()
    g = torch.Generator().manual_seed(7)
    small_l = torch.randn(BL, C, 6, 6, generator=g)
    small_u = torch.randn(BU, C, 6, 6, generator=g)
    teacher = torch.randn(BU, C, 6, 6, generator=g) * 4
    up = lambda t: F.interpolate(t, size=(H, W), mode="bilinear", align_corners=True)
    results = []
    for fused in (True, False):
        own = torch.nn.CrossEntropyLoss(ignore_index=255) if supervised == "plain" else None
        crit = sf.U2PLLoss(
            C, 10, rep_dim=D, low_rank=1, high_rank=4, num_queries=Q, num_negatives=NEG, supervised_loss=own
        )
        x_l, x_u = small_l.clone().requires_grad_(), small_u.clone().requires_grad_()
        kwargs = dict(size=(H, W), align_corners=True) if fused else {}
        preds = (x_l, x_u, teacher) if fused else (up(x_l), up(x_u), up(teacher))
        out = crit(
            preds[0],
            label_l,
            preds[1],
            pseudo_u,
            preds[2],
            2,
            rep=rep,
            rep_teacher=rep_t,
            prob_teacher=prob_t,
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        )
        results.append((out, torch.autograd.grad(out.total, (x_l, x_u))))
    (fused, fused_grads), (plain, plain_grads) = results
    assert float(fused.unsupervised.detach()) > 0 and float(fused.contrastive.detach()) > 0
    for name in ("total", "supervised", "unsupervised", "contrastive"):
        torch.testing.assert_close(getattr(fused, name), getattr(plain, name), rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
