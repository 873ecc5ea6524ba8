"""newest_negatives (U2PL's memory-bank push selection) against the mask-and-top-k reference."""

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast import reference
from semiseg_fast.ops.newest_negatives import newest_negatives
from tests.helpers import FUSED


def inputs(b=4, c=7, h=6, w=5, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g) * 2
    if ties:
        logits[:, 2] = logits[:, 5]  # equal probabilities: ranks broken by class index
    prob = torch.softmax(logits, 1)
    label = torch.randint(0, c + 1, (b * h * w,), generator=g)  # c: no class
    unreliable = torch.rand(b * h * w, generator=g) < 0.5
    labeled = torch.arange(b) < b // 2
    return prob, label, unreliable, labeled


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("low_rank,high_rank,threshold,limit", [(1, 4, 1.0, 3), (0, 5, 0.4, 50), (2, 7, 0.9, 1000)])
def test_matches_the_mask_and_topk_reference(backend, quirks, ties, low_rank, high_rank, threshold, limit):
    args = (*inputs(ties=ties), low_rank, high_rank, threshold, limit, quirks)
    want_index, want_counts = reference.newest_negatives(*args)
    with sf.backend(backend):
        index, counts = newest_negatives(*args)
    assert index.shape == want_index.shape and counts.dtype == torch.int64
    assert torch.equal(counts, want_counts) and int(counts.sum()) > 0
    for k in range(index.shape[0]):  # beyond counts[k] the rows are filler
        n = int(counts[k])
        assert torch.equal(index[k, :n], want_index[k, :n]), k


@pytest.mark.parametrize("backend", FUSED)
def test_nothing_unreliable_selects_nothing(backend):
    prob, label, unreliable, labeled = inputs()
    with sf.backend(backend):
        index, counts = newest_negatives(prob, label, torch.zeros_like(unreliable), labeled, 1, 4, 1.0, 5)
    assert int(counts.sum()) == 0 and int(index.min()) >= 0 and int(index.max()) < label.numel()


def test_bad_arguments_are_named():
    prob, label, unreliable, labeled = inputs()
    with pytest.raises(ValueError, match="prob"):
        newest_negatives(prob.double(), label, unreliable, labeled, 1, 4, 1.0, 5)
    with pytest.raises(ValueError, match="label"):
        newest_negatives(prob, label.int(), unreliable, labeled, 1, 4, 1.0, 5)
    with pytest.raises(ValueError, match="unreliable"):
        newest_negatives(prob, label, unreliable[:-1], labeled, 1, 4, 1.0, 5)
    with pytest.raises(ValueError, match="labeled"):
        newest_negatives(prob, label, unreliable, labeled[:1], 1, 4, 1.0, 5)
    with pytest.raises(ValueError, match="limit"):
        newest_negatives(prob, label, unreliable, labeled, 1, 4, 1.0, 0)
