"""One check per argument, for numbers and 0-dim tensors alike: non-finite or out-of-range values
are refused where they are given (by the op, by a module at construction, by the CLI), with the
same message whichever way they came; a tensor normalizer of 0 (a count that came out empty)
still gives a loss of 0."""

import math

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.experiments import main as experiments_main


def _logits():
    return torch.randn(2, 4, 3, 5), torch.randint(0, 4, (2, 3, 5))


@pytest.mark.parametrize(
    "normalizer, message",
    [
        (torch.tensor(-2.0), "normalizer: expected >= 0.0, got -2.0"),
        (torch.tensor(math.inf), "normalizer: expected a finite number, got inf"),
        (torch.tensor(math.nan), "normalizer: expected a finite number, got nan"),
        (math.inf, "normalizer: expected a finite number, got inf"),
        (-1.0, "normalizer: expected > 0.0, got -1.0"),
    ],
)
def test_bad_normalizers_are_refused(normalizer, message):
    x, t = _logits()
    with pytest.raises(ValueError, match=message):
        sf.pseudo_label_cross_entropy(x, t, normalizer=normalizer)
    with pytest.raises(ValueError, match=message):
        sf.PseudoLabelCrossEntropy(normalizer=normalizer)


def test_a_zero_tensor_normalizer_gives_zero():
    x, t = _logits()
    x.requires_grad_()
    loss = sf.pseudo_label_cross_entropy(x, t, normalizer=torch.tensor(0))
    loss.backward()
    assert loss.item() == 0.0 and not x.grad.any()


@pytest.mark.parametrize("call", [
    lambda x: sf.pixel_stats(x, temperature=math.inf),
    lambda x: sf.calibrated_fusion(x, x, temperature=math.inf),
    lambda x: sf.pseudoseg_consistency_loss(x, x, x, temperature=math.inf),
])  # fmt: skip
def test_infinite_temperatures_are_refused(call):
    with pytest.raises(ValueError, match="temperature: expected a finite number, got inf"):
        call(_logits()[0])


def test_modules_refuse_bad_options_at_construction():
    with pytest.raises(ValueError, match=r"threshold: expected <= 1.0, got 2.0"):
        sf.FixMatchLoss(threshold=2.0)
    with pytest.raises(ValueError, match="normalizer: expected one of 'valid', 'confident', 'total'"):
        sf.FixMatchLoss(normalizer="weighted")
    with pytest.raises(ValueError, match="reduction: expected 'mean', 'sum' or 'none'"):
        sf.PseudoLabelCrossEntropy(reduction="avg")


def test_a_tensor_normalizer_compiles_and_is_checked_in_the_graph():
    x, t = _logits()
    fn = torch.compile(lambda x, t, n: sf.pseudo_label_cross_entropy(x, t, normalizer=n), fullgraph=True)
    expected = sf.pseudo_label_cross_entropy(x, t, normalizer=torch.tensor(7.0))
    torch.testing.assert_close(fn(x, t, torch.tensor(7.0)), expected)
    with pytest.raises(RuntimeError, match="normalizer: expected a finite number >= 0.0"):  # checked on the device
        fn(x, t, torch.tensor(-1.0))


@pytest.mark.parametrize("args, message", [(["--jobs", "0"], "--jobs: expected a positive"),
                                           (["--seeds", "-1"], "--seeds: expected integers >= 0")])  # fmt: skip
def test_experiments_refuse_bad_counts(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        experiments_main(["--out", str(tmp_path), *args])
