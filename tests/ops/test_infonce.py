"""infonce_loss (U2PL's contrastive InfoNCE, negatives read by row) against fp64, on every backend."""

import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from semiseg_fast.ops import infonce_loss
from tests.helpers import ALL, FUSED


def inputs(k=5, q=7, m=6, d=37, r=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(k, q, d, generator=g)
    positive = torch.randn(k, d, generator=g)
    keys = torch.randn(r, d, generator=g)
    rows = torch.randint(0, r, (k, q, m), generator=g)
    weight = torch.rand(k, generator=g)
    return anchors, positive, keys, rows, weight


def infonce64(anchors, positive, keys, rows, weight, temperature):
    """Loss and d loss / d anchors in fp64, written from the definition."""
    a = anchors.detach().double().requires_grad_()
    unit = lambda v: v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-8)
    qa, pos, neg = unit(a), unit(positive.double()), unit(keys.double()[rows])
    logits = torch.cat([(qa * pos[:, None]).sum(-1, keepdim=True), torch.einsum("kqd,kqmd->kqm", qa, neg)], 2)
    k, q = anchors.shape[:2]
    ce = F.cross_entropy(
        logits.reshape(k * q, -1) / temperature, torch.zeros(k * q, dtype=torch.long), reduction="none"
    )
    loss = (ce.reshape(k, q) * weight.double()[:, None]).sum()
    loss.backward()
    return loss.detach(), a.grad


def check(backend, anchors, positive, keys, rows, weight, temperature=0.5, upstream=1.3):
    x = anchors.clone().requires_grad_()
    with sf.backend(backend):
        loss = infonce_loss(x, positive, keys, rows, weight, temperature)
    (g,) = torch.autograd.grad(loss, x, torch.tensor(upstream))
    ref, ref_g = infonce64(anchors, positive, keys, rows, weight, temperature)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-6)
    scale = ref_g.abs().amax(-1, keepdim=True).clamp_min(1.0)  # rows of a zero anchor are ~1e8
    torch.testing.assert_close(g.double() / scale, ref_g * upstream / scale, rtol=1e-4, atol=1e-6)
    return loss, g


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("d", [2, 37, 64, 256])
def test_matches_fp64(backend, d):
    check(backend, *inputs(d=d, seed=d))


@pytest.mark.parametrize("backend", ALL)
def test_zero_vectors_inactive_slots_and_repeated_rows(backend):
    anchors, positive, keys, rows, weight = inputs()
    anchors[0, 0] = 0.0  # normalised by the 1e-8 floor, as torch.cosine_similarity
    keys[3] = 0.0
    rows[1, :, :] = 3  # every negative of slot 1 is the zero key
    rows[2, 0, :] = 5  # one key repeated
    positive[4] = 0.0
    weight[3] = 0.0
    _, g = check(backend, anchors, positive, keys, rows, weight)
    assert torch.count_nonzero(g[3]) == 0  # an inactive slot gets no gradient


@pytest.mark.parametrize("backend", ALL)
def test_one_negative_and_extreme_temperatures(backend):
    args = inputs(m=1)
    for t in (0.05, 0.5, 10.0):
        check(backend, *args, temperature=t)


def test_a_zero_weight_slot_reads_no_rows():
    """Rows of an inactive slot may be anything in range; its loss and gradient stay 0 (C++)."""
    anchors, positive, keys, rows, weight = inputs()
    weight[:] = 0.0
    x = anchors.requires_grad_()
    with sf.backend("cpp"):
        loss = infonce_loss(x, positive, keys, rows, weight)
    (g,) = torch.autograd.grad(loss, x)
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(g) == 0


@pytest.mark.parametrize("backend", FUSED)
def test_fullgraph_compile_matches_eager(backend):
    torch._dynamo.reset()
    anchors, positive, keys, rows, weight = inputs()
    x = anchors.requires_grad_()
    fn = lambda a: infonce_loss(a * 2, positive, keys, rows, weight) * 3
    with sf.backend(backend):
        eager = fn(x)
        (ge,) = torch.autograd.grad(eager, x)
        comp = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
        (gc,) = torch.autograd.grad(comp, x)
    torch.testing.assert_close(comp, eager)
    torch.testing.assert_close(gc, ge)


def test_bad_arguments_are_named():
    anchors, positive, keys, rows, weight = inputs()
    with pytest.raises(ValueError, match="anchors"):
        infonce_loss(anchors[0], positive, keys, rows, weight)
    with pytest.raises(ValueError, match="positive"):
        infonce_loss(anchors, positive[:2], keys, rows, weight)
    with pytest.raises(ValueError, match="keys"):
        infonce_loss(anchors, positive, keys[:, :3], rows, weight)
    with pytest.raises(ValueError, match="rows"):
        infonce_loss(anchors, positive, keys, rows.int(), weight)
    with pytest.raises(ValueError, match="weight"):
        infonce_loss(anchors, positive, keys, rows, weight.double())
    with pytest.raises(ValueError, match="temperature"):
        infonce_loss(anchors, positive, keys, rows, weight, 0.0)
    bad = rows.clone()
    bad[0, 0, 0] = keys.shape[0]
    with sf.backend("cpp"), pytest.raises(IndexError, match="rows"):
        infonce_loss(anchors, positive, keys, bad, weight)
