import pytest
import torch

import semiseg_fast as sf
from tests.helpers import ALL, DTYPES, LAYOUTS, make_logits


def sort_based(x, low, high):
    """The definition: classes at positions [low, high) of a stable descending sort."""
    idx = torch.sort(x.float(), dim=1, descending=True, stable=True).indices[:, low:high]
    out = torch.zeros(x.shape, dtype=torch.bool)
    return out.scatter_(1, idx, True)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c", [2, 19, 21, 150])
def test_equals_sort_definition(backend, dtype, layout, c):
    if backend == "triton" and c == 150 and (dtype != torch.float32 or layout != "nchw"):
        pytest.skip("the interpreter runs the C^2 comparisons of C=150 slowly; one layout is enough there")
    x = make_logits(2, c, 5, 7, dtype=dtype, layout=layout)
    for low, high in [(0, 1), (1, 3), (3, 20), (0, c)]:
        if low >= c:
            continue
        with sf.backend(backend):
            m = sf.negative_class_mask(x, low, high)
        assert m.dtype == torch.bool and m.shape == x.shape
        assert torch.equal(m, sort_based(x, low, min(high, c))), (low, high)


@pytest.mark.parametrize("backend", ALL)
def test_ties_rank_by_class_index(backend):
    x = torch.zeros(1, 4, 1, 1)
    x[0, 2] = 1.0  # ranks: class 2, then 0, 1, 3 (equal values in index order)
    with sf.backend(backend):
        assert sf.negative_class_mask(x, 1, 3)[0, :, 0, 0].tolist() == [True, True, False, False]


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_probabilities_and_many_classes(backend):
    x = torch.softmax(make_logits(1, 300, 3, 4), dim=1)
    with sf.backend(backend):
        m = sf.negative_class_mask(x, 3, 20)
    assert torch.equal(m, sort_based(x, 3, 20)) and int(m.sum()) == 17 * 12


@pytest.mark.parametrize("backend", ALL)
def test_settings_that_select_nothing_are_refused(backend):
    x = torch.randn(2, 3, 4, 4)
    with sf.backend(backend):
        with pytest.raises(ValueError, match=r"low_rank: expected < C=3, got 3"):
            sf.negative_class_mask(x, 3, 20)  # U2PL's default on a 3-class dataset
        with pytest.raises(ValueError, match=r"high_rank: expected > low_rank=2, got 2"):
            sf.negative_class_mask(x, 2, 2)
        with pytest.raises(ValueError, match=r"low_rank: expected >= 0"):
            sf.negative_class_mask(x, -1, 2)
        with pytest.raises(TypeError, match=r"logits_or_probs: expected a floating dtype"):
            sf.negative_class_mask(x.long(), 0, 2)
