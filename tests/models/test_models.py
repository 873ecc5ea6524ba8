import pytest
import torch
from torch import nn

from semiseg_fast.models import DeepLabV3Plus, build_model, model_outputs


class TinyUserModel(nn.Module):
    def __init__(self, num_classes, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("size", [(32, 32), (45, 38)])
def test_deeplab_shapes(size):
    model = DeepLabV3Plus(5, width=8, rep_dim=12).eval()
    out = model(torch.randn(2, 3, *size))
    h, w = (size[0] + 3) // 4, (size[1] + 3) // 4
    assert out["pred"].shape[:2] == (2, 5) and out["rep"].shape[:2] == (2, 12)
    assert abs(out["pred"].shape[2] - h) <= 1 and abs(out["pred"].shape[3] - w) <= 1
    assert "rep" not in DeepLabV3Plus(5, width=8, rep_dim=None).eval()(torch.randn(1, 3, *size))


def test_channels_last_gives_the_same_result():
    torch.manual_seed(0)
    model = DeepLabV3Plus(4, width=8).eval()
    x = torch.randn(2, 3, 40, 40)
    ref = model(x)["pred"]
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last))["pred"]
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_build_by_name_and_import_path():
    assert isinstance(build_model("deeplabv3plus", 3, width=8), DeepLabV3Plus)
    user = build_model(f"{__name__}:TinyUserModel", 3, channels=2)
    logits, rep = model_outputs(user(torch.randn(1, 3, 8, 8)))
    assert logits.shape == (1, 3, 8, 8) and rep is None


@pytest.mark.parametrize(
    "name, message",
    [
        ("resnet", "expected one of"),
        ("no.such.module:Model", "cannot import"),
        (f"{__name__}:Missing", "cannot import"),
    ],
)
def test_bad_model_names(name, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, 3)


def test_bad_arguments_and_outputs():
    with pytest.raises(ValueError, match="num_classes"):
        DeepLabV3Plus(1)
    with pytest.raises(ValueError, match="width"):
        DeepLabV3Plus(3, width=7)
    with pytest.raises(TypeError, match="model output"):
        model_outputs((torch.zeros(1),))


def test_grad_cam_closed_form_equals_autograd():
    """alpha_c = GAP(d s_c / d A) computed by autograd, one backward per class, as PseudoSeg does."""
    from semiseg_fast.models import grad_cam

    torch.manual_seed(0)
    classifier = torch.nn.Linear(6, 4)
    deep = torch.randn(2, 6, 5, 7).relu().requires_grad_()
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    scores = classifier(deep.mean(dim=(2, 3)))
    cams = []
    for c in range(4):
        (g,) = torch.autograd.grad(scores[:, c].sum(), deep, retain_graph=True)
        alpha = g.mean(dim=(2, 3), keepdim=True)
        cams.append(torch.relu((alpha * deep).sum(dim=1)) * labels[:, c, None, None])
    cam = torch.stack(cams, dim=1).detach()
    peak = cam.amax(dim=(2, 3), keepdim=True)
    cam = cam / torch.where(peak > 0, peak, torch.ones_like(peak))
    torch.testing.assert_close(grad_cam(deep, classifier, labels), cam, rtol=1e-4, atol=1e-5)
    assert not grad_cam(deep, classifier, labels).requires_grad


def test_pseudoseg_heads():
    from semiseg_fast.models import image_labels_from_masks

    model = DeepLabV3Plus(num_classes=5, width=8, rep_dim=None, pseudoseg=True)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert out["pred"].shape == out["sgc"].shape == (3, 5, 8, 8) and out["cls"].shape == (3, 4)
    labels = torch.tensor([[[0, 2], [255, 4]], [[0, 0], [0, 0]]], dtype=torch.uint8)
    assert image_labels_from_masks(labels, 5).tolist() == [[0, 1, 0, 1], [0, 0, 0, 0]]
    # known image labels: a class marked absent has no CAM, so only the background channel and the
    # attention-refined CAMs of present classes drive the SGC; the SGC learns from its own CE
    known = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3)
    sgc = model(x, known)["sgc"]
    sgc.sum().backward()
    assert model.pseudoseg.sgc.key.weight.grad is not None
    assert model.pseudoseg.classifier.weight.grad is None  # CAMs enter without gradient


@pytest.mark.parametrize("backprop", [True, False])
def test_pseudoseg_classifier_backprop(backprop):
    """The classifier's BCE reaches the backbone only with classifier_backprop (the model's default)."""
    model = DeepLabV3Plus(num_classes=5, width=8, rep_dim=None, pseudoseg=True, pseudoseg_classifier_backprop=backprop)
    model(torch.randn(2, 3, 32, 32))["cls"].sum().backward()
    assert model.pseudoseg.classifier.weight.grad is not None
    grads = [p.grad for p in model.encoder.layer3.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads) == backprop


@pytest.mark.parametrize("size", [(3, 3), (4, 4), (4, 9), (9, 4), (6, 6), (7, 7), (1, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dilated_conv_skipping_padding_taps_equals_the_full_convolution(size, channels_last):
    """Rows / columns of taps that see only padding (dilation >= the map's side) are left out:
    same output and gradients as nn.Conv2d, on maps smaller, equal to and larger than the rate."""
    from semiseg_fast.models.deeplab import DilatedConv2d

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for kernel, dilation in ((3, 4), (3, 6), (5, 3)):
        ours = DilatedConv2d(5, 7, kernel, dilation, bias=True).to(memory_format=fmt)
        full = nn.Conv2d(5, 7, kernel, 1, dilation * (kernel // 2), dilation=dilation).to(memory_format=fmt)
        full.load_state_dict(ours.state_dict())
        x = torch.randn(2, 5, *size, dtype=torch.float64).contiguous(memory_format=fmt)
        ours, full = ours.double(), full.double()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), full(xb)
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(ours.weight.grad, full.weight.grad)
        torch.testing.assert_close(ours.bias.grad, full.bias.grad)


def test_dilated_conv_rejects_even_kernels():
    from semiseg_fast.models.deeplab import DilatedConv2d

    with pytest.raises(ValueError, match="kernel: expected an odd size"):
        DilatedConv2d(3, 3, 2, 2)


def test_deeplab_on_small_crops_equals_full_kernels(monkeypatch):
    """The whole model on 32-pixel crops (4x4 maps at stride 8: ASPP's rates 4 and 6 run as 1x1)
    equals the same weights with every kernel applied in full; tracing keeps the full kernels, so
    a traced or fx graph gives the same result at a size where nothing is left out."""
    import torch.fx

    from semiseg_fast.models.deeplab import DilatedConv2d

    torch.manual_seed(0)
    model = DeepLabV3Plus(6, width=8).double().eval()
    small, large = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randn(1, 3, 64, 64, dtype=torch.float64)
    ours = model(small)["pred"]
    traced = torch.jit.trace(model, small, strict=False)  # strict=False: the output is a dict
    graph = torch.fx.symbolic_trace(model)
    with monkeypatch.context() as m:
        m.setattr(DilatedConv2d, "forward", nn.Conv2d.forward)
        full_small, full_large = model(small)["pred"], model(large)["pred"]
    torch.testing.assert_close(ours, full_small)
    torch.testing.assert_close(traced(small)["pred"], full_small)
    torch.testing.assert_close(graph(small)["pred"], full_small)
    torch.testing.assert_close(traced(large)["pred"], full_large)
