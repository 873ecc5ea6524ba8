"""Bad input gets an error naming the argument and the expected form, on every backend."""

import pytest
import torch

import semiseg_fast as sf
from tests.helpers import ALL

X = torch.randn(2, 5, 3, 4)
T = torch.randint(0, 5, (2, 3, 4), dtype=torch.uint8)


def raises(backend, exc, match, fn, *args, **kw):
    with sf.backend(backend), pytest.raises(exc, match=match):
        fn(*args, **kw)


@pytest.mark.parametrize("backend", ALL)
def test_logits_checks(backend):
    for f, extra in [(sf.pixel_stats, ()), (sf.pseudo_label_cross_entropy, (T,))]:
        raises(backend, ValueError, r"logits: expected a 4-D tensor", f, X[0], *extra)
        raises(backend, TypeError, r"logits: expected a floating dtype", f, X.long(), *extra)
        raises(backend, ValueError, r"logits: expected at least 2 classes.*C=1", f, X[:, :1], *extra)
        raises(backend, TypeError, r"logits: expected a torch.Tensor", f, [1.0], *extra)


@pytest.mark.parametrize("backend", ALL)
def test_target_checks(backend):
    ce = sf.pseudo_label_cross_entropy
    raises(backend, TypeError, r"target: expected an integer dtype.*float32", ce, X, T.float())
    raises(backend, TypeError, r"target: expected an integer dtype.*bool", ce, X, T.bool())
    raises(backend, ValueError, r"target: expected shape \(N, H, W\) = \(2, 3, 4\)", ce, X, T[:, :2])
    bad = T.clone()
    bad[1, 2, 3] = 7
    raises(
        backend,
        IndexError,
        r"target: expected class indices in \[0, 5\) or ignore_index=255, got 7 "
        r"at \(n=1, h=2, w=3\)",
        ce,
        X,
        bad,
    )
    neg = T.long()
    neg[0, 0, 0] = -100
    raises(backend, IndexError, r"target: .* got -100", ce, X, neg)


@pytest.mark.parametrize("backend", ALL)
def test_option_checks(backend):
    ce = sf.pseudo_label_cross_entropy
    raises(backend, ValueError, r"reduction: expected 'mean', 'sum' or 'none', got 'avg'", ce, X, T, reduction="avg")
    raises(
        backend,
        ValueError,
        r"normalizer: expected one of 'valid', 'weighted', 'total'",
        ce,
        X,
        T,
        normalizer="confident",
    )
    raises(backend, ValueError, r"normalizer: expected > 0", ce, X, T, normalizer=0)
    raises(backend, TypeError, r"ignore_index: expected an int", ce, X, T, ignore_index=2.5)
    raises(backend, ValueError, r"weight: expected shape", ce, X, T, weight=torch.ones(2, 3))
    raises(
        backend,
        TypeError,
        r"weight: expected a floating or bool dtype",
        ce,
        X,
        T,
        weight=torch.ones(2, 3, 4, dtype=torch.long),
    )
    raises(backend, ValueError, r"temperature: expected > 0", sf.pixel_stats, X, temperature=0)
    raises(backend, TypeError, r"temperature: expected a number", sf.pixel_stats, X, temperature="1")


@pytest.mark.parametrize("backend", ALL)
def test_fixmatch_checks(backend):
    fm = sf.fixmatch_loss
    raises(backend, ValueError, r"teacher_logits: expected the shape of student_logits", fm, X, X[:, :4])
    raises(backend, ValueError, r"student_logits: expected a 4-D tensor", fm, X[0], X[0])
    raises(backend, TypeError, r"teacher_logits: expected a floating dtype", fm, X, X.int())
    raises(backend, ValueError, r"threshold: expected <= 1.0, got 1.5", fm, X, X, threshold=1.5)
    raises(backend, ValueError, r"threshold: expected >= 0.0", fm, X, X, threshold=-0.1)
    raises(backend, ValueError, r"ignore_mask: expected shape", fm, X, X, ignore_mask=T[0])
    raises(backend, TypeError, r"ignore_mask: expected a bool or integer dtype", fm, X, X, ignore_mask=T.float())
    raises(
        backend,
        ValueError,
        r"normalizer: expected one of 'valid', 'confident', 'total'",
        fm,
        X,
        X,
        normalizer="weighted",
    )


def test_backend_names():
    with pytest.raises(ValueError, match=r"backend: expected one of 'auto', 'reference', 'cpp', 'triton', got 'cuda'"):
        with sf.backend("cuda"):
            pass


def test_backend_env_var(monkeypatch):
    monkeypatch.setenv("SEMISEG_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SEMISEG_FAST_BACKEND: expected one of"):
        sf.pixel_stats(X)
    monkeypatch.setenv("SEMISEG_FAST_BACKEND", "reference")
    assert sf.get_backend() == "reference"
    with sf.backend("cpp"):
        assert sf.get_backend() == "cpp"
    assert sf.get_backend() == "reference"


def test_auto_backend_on_cpu_is_cpp():
    from semiseg_fast._backend import resolve

    assert resolve(torch.device("cpu")) == "cpp"


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    from semiseg_fast._backend import resolve

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with sf.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve(torch.device("cpu"))


def test_cpp_refuses_cuda_tensors():
    from semiseg_fast._backend import resolve

    with sf.backend("cpp"), pytest.raises(RuntimeError, match="backend 'cpp' runs on CPU tensors only"):
        resolve(torch.device("cuda"))


@pytest.mark.parametrize("backend", ALL)
def test_ignore_index_outside_the_label_dtype_ignores_nothing(backend):
    # uint8 maps cannot hold -1; PyTorch alone would compare them against a wrapped 255.
    mask = torch.tensor([[[255, 3, 0, 1]]], dtype=torch.uint8).expand(2, 3, 4)
    s, t = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    with sf.backend(backend):
        loss = sf.fixmatch_loss(s, t, 0.0, ignore_mask=mask, ignore_index=-1)
    with sf.backend("reference"):
        full = sf.fixmatch_loss(s, t, 0.0)
    torch.testing.assert_close(loss, full)
    target = T.clone()
    target[0, 0, 0] = 255
    raises(backend, IndexError, r"got 255", sf.pseudo_label_cross_entropy, X, target, ignore_index=-1)


@pytest.mark.parametrize("backend", ALL)
def test_class_counts_beyond_the_target_dtype(backend):
    # C = 256 with uint8 targets: every value is a class; comparing with 256 must not wrap to 0.
    x = torch.randn(1, 256, 2, 2)
    target = torch.tensor([[[250, 1], [2, 3]]], dtype=torch.uint8)
    with sf.backend(backend):
        loss = sf.pseudo_label_cross_entropy(x, target, ignore_index=-1)
    with sf.backend("reference"):
        truth = torch.nn.functional.cross_entropy(x, target.long())
    torch.testing.assert_close(loss, truth)
