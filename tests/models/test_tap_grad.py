"""The tap-by-tap weight gradient of dilated convolutions equals PyTorch's, and is used only where
it applies."""

import pytest
import torch
import torch.nn.functional as F

from semiseg_fast.models.tap_grad import MIN_PADDED_FRACTION, _TapGradConv2d, conv2d_tap_grad, padded_fraction


def _brute_padded_fraction(h, w, kernel, dilation, padding):
    padded = total = 0
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            for y in range(h):
                for x in range(w):
                    yy, xx = y + ky * dilation[0] - padding[0], x + kx * dilation[1] - padding[1]
                    padded += not (0 <= yy < h and 0 <= xx < w)
                    total += 1
    return padded / total


@pytest.mark.parametrize(
    "h,w,k,d",
    [
        (4, 4, (3, 3), (2, 2)),
        (7, 7, (3, 3), (2, 2)),
        (7, 7, (3, 3), (6, 6)),
        (5, 9, (3, 5), (4, 1)),
        (1, 6, (1, 3), (1, 3)),
        (3, 3, (3, 3), (5, 5)),
    ],
)
def test_padded_fraction_counts_every_read_of_padding(h, w, k, d):
    padding = (d[0] * (k[0] // 2), d[1] * (k[1] // 2))
    assert padded_fraction(h, w, k, d, padding) == pytest.approx(_brute_padded_fraction(h, w, k, d, padding))


@pytest.mark.parametrize(
    "size,kernel,dilation",
    [
        ((4, 4), (3, 3), (2, 2)),
        ((7, 7), (3, 3), (4, 4)),
        ((5, 8), (3, 5), (3, 2)),
        ((4, 6), (1, 3), (1, 5)),
        ((3, 3), (3, 3), (3, 3)),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_equal_pytorchs(size, kernel, dilation, channels_last, bias):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    padding = (dilation[0] * (kernel[0] // 2), dilation[1] * (kernel[1] // 2))
    assert padded_fraction(*size, kernel, dilation, padding) >= MIN_PADDED_FRACTION  # the tap-by-tap path
    x = torch.randn(3, 5, *size, dtype=torch.float64).contiguous(memory_format=fmt)
    weight = torch.randn(7, 5, *kernel, dtype=torch.float64).contiguous(memory_format=fmt)
    b = torch.randn(7, dtype=torch.float64) if bias else None
    ours = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, b)]
    ref = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, b)]
    y = conv2d_tap_grad(*ours, padding, dilation)
    assert y.grad_fn.name().endswith("_TapGradConv2dBackward")
    y_ref = F.conv2d(*ref, 1, padding, dilation)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for a, r in zip(ours, ref):
        if a is not None:
            torch.testing.assert_close(a.grad, r.grad)
    assert ours[1].grad.is_contiguous(memory_format=fmt)


def test_gradcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w, b: _TapGradConv2d.apply(a, w, b, (3, 3), (3, 3)), (x, weight, bias))


def test_only_the_gradients_asked_for():
    x = torch.randn(2, 3, 4, 4)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    conv2d_tap_grad(x, weight, None, (2, 2), (2, 2)).sum().backward()
    assert weight.grad is not None and x.grad is None
    x.requires_grad_()
    weight.requires_grad_(False)
    conv2d_tap_grad(x, weight, None, (2, 2), (2, 2)).sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(F.conv2d(x, weight, None, 1, 2, 2).sum(), x)[0])


@pytest.mark.parametrize("case", ["dense", "no_grad", "autocast", "float16", "not_same", "even_kernel"])
def test_falls_back_to_pytorch_where_it_does_not_apply(case):
    """Mostly-valid reads, inference, autocast, other dtypes and other paddings run F.conv2d itself."""
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    weight, padding, dilation = torch.randn(4, 3, 3, 3), (2, 2), (2, 2)
    if case == "dense":
        assert padded_fraction(7, 7, (3, 3), dilation, padding) < MIN_PADDED_FRACTION
    else:
        x = torch.randn(2, 3, 4, 4, requires_grad=True)
    if case == "float16":
        x, weight = x.detach().half().requires_grad_(), weight.half()
    if case == "not_same":
        padding = (1, 1)
    if case == "even_kernel":
        weight, padding = torch.randn(4, 3, 2, 2), (2, 2)
    context = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if case == "autocast"
        else torch.no_grad()
        if case == "no_grad"
        else torch.enable_grad()
    )
    with context:
        y = conv2d_tap_grad(x, weight, None, padding, dilation)
        y_ref = F.conv2d(x, weight, None, 1, padding, dilation)
    assert y.grad_fn is None or "TapGrad" not in y.grad_fn.name()
    torch.testing.assert_close(y, y_ref)


def test_deeplab_gradients_on_reduced_crops_equal_pytorchs(monkeypatch):
    """The whole model on 32-pixel crops (layer3's four convolutions and ASPP's rate 2 on 4x4 maps
    take the tap-by-tap gradient): every parameter's gradient as with plain convolutions."""
    from semiseg_fast.models import DeepLabV3Plus, deeplab

    torch.manual_seed(0)
    model = DeepLabV3Plus(6, width=8).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def graph_nodes(fn, seen):
        if fn is not None and fn not in seen:
            seen.add(fn)
            for child, _ in fn.next_functions:
                graph_nodes(child, seen)
        return seen

    def grads(expect_tap):
        model.zero_grad()
        out = model(x)
        names = [fn.name() for fn in graph_nodes(out["pred"].grad_fn, set())]
        assert sum(n.endswith("_TapGradConv2dBackward") for n in names) == (5 if expect_tap else 0)
        (out["pred"].square().sum() + out["rep"].square().sum()).backward()
        return [p.grad.clone() for p in model.parameters()]

    ours = grads(True)
    with monkeypatch.context() as m:
        m.setattr(deeplab, "conv2d_tap_grad", lambda x, w, b, p, d: F.conv2d(x, w, b, 1, p, d))
        plain = grads(False)
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b)


def test_double_backward_raises():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    (grad_w,) = torch.autograd.grad(
        conv2d_tap_grad(x, weight, None, (2, 2), (2, 2)).square().sum(), weight, create_graph=True
    )
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_w.sum().backward()


def test_compiles_in_one_graph_with_the_same_gradients():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    compiled = torch.compile(lambda a, w: conv2d_tap_grad(a, w, None, (2, 2), (2, 2)), fullgraph=True)
    compiled(x, weight).square().sum().backward()
    ours = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None
    F.conv2d(x, weight, None, 1, 2, 2).square().sum().backward()
    torch.testing.assert_close(ours[0], x.grad)
    torch.testing.assert_close(ours[1], weight.grad)
