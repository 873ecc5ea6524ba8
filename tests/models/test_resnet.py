"""The ResNet-50/101 encoders: torchvision's layout (names, shapes, parameter counts), strides and
dilations at output stride 8 and 16, loading an ImageNet-style weights file, and the errors of
model.pretrained. The network is never touched: the hub download is replaced."""

import re
import urllib.error

import pytest
import torch

from semiseg_fast.models import DeepLabV3Plus
from semiseg_fast.models.pretrained import load_pretrained
from semiseg_fast.models.resnet import IMAGENET_URLS, ResNetEncoder

# torchvision's counts (25,557,032 and 44,549,160) less the ImageNet classifier (2048 * 1000 + 1000)
PARAMETERS = {"resnet50": 23_508_032, "resnet101": 42_500_160}
STATE_ENTRIES = {"resnet50": 318, "resnet101": 624}  # 320 and 626 in torchvision's files, fc.* included


def _imagenet_like_state(name, old=False):
    """A random state dict laid out as a torchvision ImageNet file: the encoder's tensors plus
    the classifier; ``old``: without batch-norm counters, as files saved before PyTorch 0.4.1."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for k, v in ResNetEncoder(name).state_dict().items():
        if k.endswith("num_batches_tracked"):
            if not old:
                state[k] = torch.randint(0, 1000, (), generator=g)
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=g) * 0.05
    state["fc.weight"] = torch.randn(1000, 2048, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet50-0676ba61.pth"
    torch.save(_imagenet_like_state("resnet50"), path)
    return path


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub folder, and a download that fails as it does without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.hub.get_dir().startswith(str(tmp_path))  # no torch.hub.set_dir elsewhere overrides it
    calls = []

    def no_network(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints", calls


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplab_resnet50_shapes_and_strides(output_stride):
    model = DeepLabV3Plus(3, rep_dim=8, backbone="resnet50", output_stride=output_stride).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        low, mid, deep = model.encoder(x)
        out = model(x)
    assert model.encoder.channels == (256, 1024, 2048)
    s = 64 // output_stride
    assert low.shape == (1, 256, 16, 16) and mid.shape == (1, 1024, s, s) and deep.shape == (1, 2048, s, s)
    assert out["pred"].shape == (1, 3, 16, 16) and out["rep"].shape == (1, 8, 16, 16)
    # an odd size: torchvision's rounding (7x7/2 conv, 3x3/2 max-pool, 3x3/2 convs, padded)
    with torch.no_grad():
        low, mid, deep = model.encoder(torch.randn(1, 3, 33, 33))
    assert low.shape[-2:] == (9, 9) and mid.shape[-2:] == deep.shape[-2:] == ((5, 5) if output_stride == 8 else (3, 3))


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_parameter_counts_and_names_are_torchvisions(name):
    encoder = ResNetEncoder(name)
    state = encoder.state_dict()
    assert sum(p.numel() for p in encoder.parameters()) == PARAMETERS[name]
    assert len(state) == STATE_ENTRIES[name]
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.3.bn3.running_var": (512,),
        "layer3.0.downsample.1.weight": (1024,),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "layer4.2.bn3.bias": (2048,),
        f"layer3.{22 if name == 'resnet101' else 5}.conv2.weight": (256, 256, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "layer1.1.downsample.0.weight" not in state and "fc.weight" not in state
    assert len(encoder.layer3) == (23 if name == "resnet101" else 6)


@pytest.mark.parametrize(
    "output_stride, expected",
    [
        # (stride, dilation) of the 3x3 convolution of layer3's and layer4's first and second blocks
        (16, {"layer3.0": (2, 1), "layer3.1": (1, 1), "layer4.0": (1, 1), "layer4.1": (1, 2)}),
        (8, {"layer3.0": (1, 1), "layer3.1": (1, 2), "layer4.0": (1, 2), "layer4.1": (1, 4)}),
    ],
)
def test_dilation_replaces_the_stride_as_torchvision(output_stride, expected):
    modules = dict(ResNetEncoder("resnet50", output_stride).named_modules())
    for block, (stride, dilation) in expected.items():
        conv2 = modules[block + ".conv2"]
        assert conv2.stride == (stride, stride) and conv2.dilation == conv2.padding == (dilation, dilation), block
    assert modules["layer4.0.downsample.0"].stride == (1, 1)
    assert modules["layer3.0.downsample.0"].stride == ((2, 2) if output_stride == 16 else (1, 1))


def test_random_initialisation_is_kaiming_fan_out():
    encoder = ResNetEncoder("resnet50")
    w = encoder.layer3[1].conv2.weight  # fan-out 256 * 9: std sqrt(2 / 2304)
    assert abs(w.std().item() - (2 / 2304) ** 0.5) < 0.002
    assert torch.equal(encoder.layer2[0].bn3.weight, torch.ones(512))


@pytest.mark.parametrize("old", [False, True], ids=["with-counters", "without-counters"])
def test_an_imagenet_file_loads_into_the_encoder(tmp_path, old):
    state = _imagenet_like_state("resnet50", old=old)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = DeepLabV3Plus(3, rep_dim=None, backbone="resnet50", output_stride=16)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    load_pretrained(model, str(path), "resnet50")
    loaded = model.encoder.state_dict()
    assert loaded.keys() == {k for k in state if not k.startswith("fc.")} | set(loaded if old else ())
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    if old:
        assert int(loaded["bn1.num_batches_tracked"]) == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in head_before.items())  # the rest is untouched


def test_a_missing_file_names_the_key_and_the_path(tmp_path):
    model = DeepLabV3Plus(3, rep_dim=None, backbone="resnet50", output_stride=16)
    path = str(tmp_path / "nowhere" / "resnet50.pth")
    with pytest.raises(FileNotFoundError, match="model.pretrained") as e:
        load_pretrained(model, path, "resnet50")
    assert path in str(e.value)


def test_a_mismatched_state_dict_names_the_keys(tmp_path):
    state = _imagenet_like_state("resnet50")
    del state["layer2.1.conv2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["layer1.0.bn1.weight"] = torch.ones(65)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    model = DeepLabV3Plus(3, rep_dim=None, backbone="resnet50", output_stride=16)
    before = model.encoder.conv1.weight.clone()
    with pytest.raises(ValueError) as e:
        load_pretrained(model, str(path), "resnet50")
    message = str(e.value)
    assert message.startswith(f"model.pretrained={path}:")
    assert "missing 1: layer2.1.conv2.weight" in message
    assert "unexpected 1: layer5.0.conv1.weight" in message
    assert "layer1.0.bn1.weight (65,) (expected (64,))" in message
    assert torch.equal(model.encoder.conv1.weight, before)  # nothing loaded


def test_a_resnet50_file_does_not_load_into_resnet101(imagenet_file):
    model = DeepLabV3Plus(3, rep_dim=None, backbone="resnet101", output_stride=16)
    # 17 more blocks, 15 tensors each (their batch-norm counters start at 0, as a file without any)
    with pytest.raises(ValueError, match=r"missing 255: layer3\.6\.conv1\.weight"):
        load_pretrained(model, str(imagenet_file), "resnet101")


def test_imagenet_without_internet_or_cache_says_what_to_download(offline_hub):
    checkpoints, calls = offline_hub
    model = DeepLabV3Plus(3, rep_dim=None, backbone="resnet50", output_stride=16)
    with pytest.raises(ValueError) as e:
        load_pretrained(model, "imagenet", "resnet50")
    message = str(e.value)
    assert message.startswith("model.pretrained=imagenet: could not download the resnet50 weights")
    assert "Temporary failure in name resolution" in message
    assert IMAGENET_URLS["resnet50"] in message and "model.pretrained=/path/to/resnet50-0676ba61.pth" in message
    assert str(checkpoints / "resnet50-0676ba61.pth") in message
    assert calls == ["https://download.pytorch.org/models/resnet50-0676ba61.pth"]
    from semiseg_fast.models.resnet import imagenet_state_dict

    with pytest.raises(ValueError, match=r"^model.pretrained=imagenet: .*resnet101-63fe2227\.pth"):
        imagenet_state_dict("resnet101")
    with pytest.raises(
        ValueError, match=re.escape("model.pretrained=imagenet: ImageNet weights exist for resnet50 | ")
    ):
        imagenet_state_dict("small")


def test_imagenet_comes_from_torchs_hub_cache(offline_hub, imagenet_file):
    checkpoints, calls = offline_hub
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet50-0676ba61.pth").write_bytes(imagenet_file.read_bytes())
    model = DeepLabV3Plus(3, rep_dim=None, backbone="resnet50", output_stride=16)
    load_pretrained(model, "imagenet", "resnet50")
    assert not calls
    expected = torch.load(imagenet_file, weights_only=True)
    assert torch.equal(model.encoder.layer4[2].conv3.weight, expected["layer4.2.conv3.weight"])

    (checkpoints / "resnet50-0676ba61.pth").write_bytes(b"half a download")
    with pytest.raises(ValueError, match=r"model.pretrained=imagenet: .*resnet50-0676ba61.pth' is not a readable"):
        load_pretrained(model, "imagenet", "resnet50")
    assert not calls


def test_channels_last_gives_the_same_result():
    model = DeepLabV3Plus(3, rep_dim=None, backbone="resnet50", output_stride=8)
    model.eval()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        ref = model(x)["pred"]
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))["pred"]
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
