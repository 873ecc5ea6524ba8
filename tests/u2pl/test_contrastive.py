import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.reference import u2pl as ref
from semiseg_fast.u2pl import ClassMemoryBank, ContrastiveDraws, u2pl_contrastive_loss

B, C, D, H, W = 4, 5, 8, 6, 7
Q, NEG = 16, 3


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    rep = torch.randn(B, D, H, W, generator=g, requires_grad=True)
    rep_t = torch.randn(B, D, H, W, generator=g)
    prob = torch.softmax(torch.randn(B, C, H, W, generator=g) * 2, 1)
    label = torch.randint(0, C, (B, H, W), generator=g)
    label[0, 0] = 255
    reliable = torch.rand(B, H, W, generator=g) > 0.3
    unreliable = torch.rand(B, H, W, generator=g) > 0.5
    is_labeled = torch.tensor([True, True, False, False])
    return rep, rep_t, prob, label, reliable, unreliable, is_labeled


@pytest.mark.parametrize("official_quirks", [False, True])
def test_matches_official_transcription_step_by_step(official_quirks):
    caps = [50] + [30] * (C - 1)  # small capacities: the queues wrap within the run
    bank = ClassMemoryBank(C, D, capacity=caps)
    official_bank = ref.MemoryBank(C, D, caps)
    kw = dict(low_rank=1, high_rank=4, num_queries=Q, num_negatives=NEG, official_quirks=official_quirks)
    for step in range(4):
        rep, rep_t, prob, label, rel, unrel, isl = inputs(step)
        g = torch.Generator().manual_seed(100 + step)
        a = torch.randint(0, 10**6, (C, Q), generator=g)
        n = torch.randint(0, 10**6, (C, Q * NEG), generator=g)
        loss_ref = ref.contrastive_loss(
            rep,
            rep_t,
            prob,
            label,
            rel,
            unrel,
            isl,
            official_bank,
            {k: a[k] for k in range(C)},
            {k: n[k] for k in range(C)},
            **kw,
        )
        g_ref = torch.autograd.grad(loss_ref, rep)[0]
        loss = u2pl_contrastive_loss(rep, rep_t, prob, label, rel, unrel, isl, bank, draws=ContrastiveDraws(a, n), **kw)
        g_ours = torch.autograd.grad(loss, rep)[0]
        for c in range(C):
            assert torch.equal(bank.queue(c), official_bank.queues[c]), (step, c)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)
    assert max(len(q) for q in official_bank.queues) == max(caps) or official_quirks


def test_single_present_class_gives_zero_and_keeps_graph():
    rep, rep_t, prob, label, rel, unrel, isl = inputs()
    label.fill_(2)
    bank = ClassMemoryBank(C, D, capacity=100)
    loss = u2pl_contrastive_loss(
        rep, rep_t, prob, label, rel, unrel, isl, bank, num_queries=Q, num_negatives=NEG, low_rank=1, high_rank=4
    )
    assert loss == 0 and loss.requires_grad


def test_random_draws_are_reproducible_with_a_generator():
    rep, rep_t, prob, label, rel, unrel, isl = inputs()
    outs = []
    for _ in range(2):
        bank = ClassMemoryBank(C, D, capacity=100)
        g = torch.Generator().manual_seed(7)
        outs.append(
            u2pl_contrastive_loss(
                rep,
                rep_t,
                prob,
                label,
                rel,
                unrel,
                isl,
                bank,
                num_queries=Q,
                num_negatives=NEG,
                low_rank=1,
                high_rank=4,
                generator=g,
            )
        )
    assert torch.equal(outs[0], outs[1]) and outs[0] > 0


def test_push_limit_keeps_the_newest_negatives():
    rep, rep_t, prob, label, rel, unrel, isl = inputs()
    full, limited = ClassMemoryBank(C, D, capacity=1000), ClassMemoryBank(C, D, capacity=1000)
    kw = dict(num_queries=Q, num_negatives=NEG, low_rank=1, high_rank=4)
    u2pl_contrastive_loss(rep, rep_t, prob, label, rel, unrel, isl, full, **kw)
    u2pl_contrastive_loss(rep, rep_t, prob, label, rel, unrel, isl, limited, push_limit=5, **kw)
    for c in range(C):
        assert torch.equal(limited.queue(c), full.queue(c)[-5:])


def test_bad_shapes_are_named():
    rep, rep_t, prob, label, rel, unrel, isl = inputs()
    bank = ClassMemoryBank(C, D, capacity=10)
    with pytest.raises(ValueError, match="label: expected shape"):
        u2pl_contrastive_loss(rep, rep_t, prob, label[:, :2], rel, unrel, isl, bank)
    with pytest.raises(ValueError, match=r"rep_teacher: expected shape .* \(batch and size of rep"):
        u2pl_contrastive_loss(rep[:1], rep_t, prob, label, rel, unrel, isl, bank)
    with pytest.raises(TypeError, match="prob_teacher: expected a torch.Tensor"):
        u2pl_contrastive_loss(rep, rep_t, prob.tolist(), label, rel, unrel, isl, bank)
    with pytest.raises(ValueError, match="bank: expected 5 classes of dim 8"):
        u2pl_contrastive_loss(rep, rep_t, prob, label, rel, unrel, isl, ClassMemoryBank(C, 4, capacity=10))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_a_float64_bank_gives_the_float32_loss_and_gradient(backend):
    """The fused kernel reads fp32 keys by row; a bank in another dtype has its drawn rows gathered."""
    rep, rep_t, prob, label, rel, unrel, isl = inputs()
    kw = dict(num_queries=Q, num_negatives=NEG, low_rank=1, high_rank=4)
    results = []
    for dtype in (torch.float32, torch.float64):
        bank = ClassMemoryBank(C, D, capacity=100, dtype=dtype)
        with sf.backend(backend):
            u2pl_contrastive_loss(rep, rep_t, prob, label, rel, unrel, isl, bank, generator=torch.Generator(), **kw)
            loss = u2pl_contrastive_loss(
                rep, rep_t, prob, label, rel, unrel, isl, bank, generator=torch.Generator().manual_seed(3), **kw
            )
        results.append((loss, torch.autograd.grad(loss, rep)[0]))
    assert float(results[0][0]) > 0
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
