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


@pytest.mark.parametrize("name, message", [("resnet", "expected one of"), ("no.such.module:Model", "cannot import"),
                                           (f"{__name__}:Missing", "cannot import")])
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
