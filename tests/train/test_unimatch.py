"""UniMatch: the model's feature perturbation, the two-strong-view data, and the step's loss against
the same loss written out in plain PyTorch."""

import pytest
import torch
import torch.nn.functional as F

from semiseg_fast.models import DeepLabV3Plus
from semiseg_fast.models.deeplab import _drop_channels, perturbed_features
from semiseg_fast.train.config import load_config
from semiseg_fast.train.data import UnlabeledView
from semiseg_fast.train.methods import get
from semiseg_fast.train.methods.base import StepContext


def _model(seed=0):
    torch.manual_seed(seed)
    return DeepLabV3Plus(4, width=8, rep_dim=None)


def test_feature_dropout_decodes_the_perturbed_features_of_the_chosen_images():
    model = _model().eval()  # eval: batch norm by running statistics, so images do not interact
    x = torch.randn(5, 3, 24, 24)
    with perturbed_features(model, 0.5, 2, torch.Generator().manual_seed(3)):
        out = model(x)
    assert model.perturbation is None and "pred_fp" not in model(x)
    assert out["pred"].shape == (5, 4, 6, 6) and out["pred_fp"].shape == (3, 4, 6, 6)
    torch.testing.assert_close(out["pred"], model(x)["pred"])
    g = torch.Generator().manual_seed(3)
    low, _, deep = model.encoder(x[2:])
    expected = model.classifier(model._decode(_drop_channels(low, 0.5, g), _drop_channels(deep, 0.5, g)))
    torch.testing.assert_close(out["pred_fp"], expected)
    assert not torch.allclose(out["pred_fp"], out["pred"][2:])


def test_drop_channels_drops_whole_channels_at_the_rate_and_rescales():
    x = torch.ones(64, 50, 3, 3)
    y = _drop_channels(x, 0.3, torch.Generator().manual_seed(0))
    per_channel = y.amax(dim=(2, 3))
    assert torch.equal(y, per_channel[:, :, None, None].expand_as(y))  # a channel is kept or dropped whole
    assert per_channel.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert abs((per_channel == 0).float().mean().item() - 0.3) < 0.03


def test_feature_perturbation_errors_name_the_argument():
    model = _model()
    with pytest.raises(ValueError, match="rate"), perturbed_features(model, 1.0):
        pass
    with pytest.raises(ValueError, match="start"), perturbed_features(model, 0.5, 4):
        model(torch.randn(4, 3, 16, 16))
    assert model.perturbation is None  # left off after an error
    with pytest.raises(TypeError, match="DeepLabV3Plus"), perturbed_features(torch.nn.Conv2d(3, 4, 1), 0.5):
        pass


def test_two_strong_views_keep_the_first_view_and_add_an_independent_second():
    images = [(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8), torch.zeros(20, 20, dtype=torch.uint8))] * 2
    cfg = load_config(None, ["data.crop_size=16"])["data"]
    one = UnlabeledView(images, cfg, strong_color=True, cutmix_p=1.0)[(0, 7)]
    two = UnlabeledView(images, cfg, strong_color=True, cutmix_p=1.0, two_strong=True)[(0, 7)]
    weak, s1, s2, pad, box1, box2 = two
    for a, b in zip(one, (weak, s1, pad, box1)):
        assert torch.equal(a, b)
    assert not torch.equal(s1, s2) and not torch.equal(box1, box2)
    with pytest.raises(ValueError, match="two_strong"):
        UnlabeledView(images, cfg, True, 1.0, cutout_size=0.2, two_strong=True)


def _masked_ce(logits, target, keep, valid):
    ce = F.cross_entropy(logits, target.long(), reduction="none")
    return (ce * keep).sum() / valid.sum()


def test_step_is_unimatch_loss_written_out():
    config = load_config(None, ["method=unimatch", "semi.unimatch.threshold=0.3"])
    method = get("unimatch")(config, 4)
    model = _model().train()
    g = torch.Generator().manual_seed(1)
    n_l, n_u, s = 2, 4, 16
    images_l, labels_l = torch.randn(n_l, 3, s, s, generator=g), torch.randint(0, 4, (n_l, s, s), generator=g)
    labels_l[0, :3] = 255
    weak, s1, s2 = (torch.randn(n_u, 3, s, s, generator=g) for _ in range(3))
    pad = torch.zeros(n_u, s, s, dtype=torch.bool)
    pad[:, -4:] = True
    box1, box2 = torch.zeros(n_u, s, s, dtype=torch.bool), torch.zeros(n_u, s, s, dtype=torch.bool)
    box1[:, 2:9, 3:12], box2[:, 6:14, 1:7] = True, True
    ctx = StepContext(model, None, config["semi"], 255, 0, torch.Generator().manual_seed(5), 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = method.step(ctx, [images_l, labels_l], [weak, s1, s2, pad, box1, box2])

    model.load_state_dict(state)  # the same batch-norm statistics for the written-out pass
    up = lambda t: F.interpolate(t, size=(s, s), mode="bilinear", align_corners=True)
    with perturbed_features(model, 0.5, n_l, torch.Generator().manual_seed(5)):
        first = model(torch.cat([images_l, weak]))
    pred = up(first["pred"])
    pred_l, pred_w, pred_fp = pred[:n_l], pred[n_l:].detach(), up(first["pred_fp"])
    conf, label = pred_w.softmax(1).max(1)

    def roll(t, k):
        return t.roll(k, dims=0)

    mixed1 = torch.where(box1[:, None], roll(s1, 1), s1)
    mixed2 = torch.where(box2[:, None], roll(s2, 2), s2)
    pred_s1, pred_s2 = up(model(torch.cat([mixed1, mixed2]))["pred"]).split([n_u, n_u])
    sup = F.cross_entropy(pred_l, labels_l, ignore_index=255)
    strong = []
    for box, k, p in ((box1, 1, pred_s1), (box2, 2, pred_s2)):
        lab, cf, pd = (torch.where(box, roll(t, k), t) for t in (label, conf, pad))
        strong.append(_masked_ce(p, lab, (cf >= 0.3) & ~pd, ~pd))
    fp = _masked_ce(pred_fp, label, (conf >= 0.3) & ~pad, ~pad)
    expected = sup + 0.5 * 0.5 * (strong[0] + strong[1]) + 0.5 * fp
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.supervised, sup.detach(), rtol=1e-5, atol=1e-6)
    assert 0 < float(out.mask_ratio) < 1


def test_unimatch_needs_the_built_in_model():
    with pytest.raises(ValueError, match="model.name"):
        load_config(None, ["method=unimatch", "model.name=tests.train.toy_method:Model"])
