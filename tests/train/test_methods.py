import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.models import DeepLabV3Plus
from semiseg_fast.train.config import load_config
from semiseg_fast.train.methods import get
from semiseg_fast.train.methods.base import StepContext
from semiseg_fast.train.methods.base import mix as _mix
from semiseg_fast.train.methods.base import mixed_pseudo_labels as _mixed_pseudo_labels


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fixmatch_targets_from_mixed_statistics_equal_the_mixed_logits_loss(layout):
    """The fixmatch step mixes (label, confidence) maps instead of the teacher's logits: loss and
    gradient must be bit-identical to fixmatch_loss on CutMixed teacher logits."""
    g = torch.Generator().manual_seed(0)
    teacher = (torch.randn(6, 5, 12, 14, generator=g) * 4).contiguous(memory_format=layout)
    student = (torch.randn(6, 5, 12, 14, generator=g) * 2).contiguous(memory_format=layout).requires_grad_()
    box = sf.mixing.cutmix_masks(6, 12, 14, g, p=1.0)
    pad = torch.rand(6, 12, 14, generator=g) < 0.1
    expected = sf.fixmatch_loss(student, _mix(box, teacher), 0.7, ignore_mask=_mix(box, pad))
    (g_expected,) = torch.autograd.grad(expected, student)
    label, conf = _mixed_pseudo_labels(box, teacher)
    valid = ~_mix(box, pad)
    target = label.masked_fill(~(valid & (conf >= 0.7)), 255)
    loss = sf.pseudo_label_cross_entropy(student, target, normalizer=valid.sum())
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.equal(loss, expected) and torch.equal(grad, g_expected)


@pytest.mark.parametrize("soft", [False, True])
def test_selftrain_strong_view_pastes_the_previous_crop_with_its_labels(soft):
    """The strong step equals the plain step on crops and labels CutMixed beforehand."""
    g = torch.Generator().manual_seed(0)
    n, s = 3, 16
    images_l, labels_l = torch.randn(2, 3, s, s, generator=g), torch.randint(0, 4, (2, s, s), generator=g)
    images_p, labels_p = torch.randn(n, 3, s, s, generator=g), torch.randint(0, 4, (n, s, s), generator=g)
    labels_p[:, :2] = 255
    probs = torch.rand(n, 2, s, s, generator=g)
    soft_part = [torch.stack([labels_p.long().clamp(max=3), (labels_p.long() + 1) % 4], 1), probs] if soft else []
    box = torch.zeros(n, s, s, dtype=torch.bool)
    box[:, 3:11, 4:9] = True
    results = []
    for strong in (True, False):
        config = load_config(
            None,
            [
                "method=selftrain",
                "semi.selftrain.pseudo_dir=x",
                f"semi.selftrain.strong={str(strong).lower()}",
                f"semi.selftrain.soft={str(soft).lower()}",
            ],
        )
        method = get("selftrain")(config, 4)
        torch.manual_seed(1)
        model = DeepLabV3Plus(4, width=8, rep_dim=None).eval()
        ctx = StepContext(model, None, config["semi"], 255, 0, torch.Generator(), 4)
        if strong:
            batch = [images_p, labels_p, *soft_part, box]
        else:
            batch = [_mix(box, t) for t in (images_p, labels_p, *soft_part)]
        results.append(method.step(ctx, [images_l, labels_l], batch))
    assert torch.equal(results[0].loss, results[1].loss) and torch.equal(
        results[0].unsupervised, results[1].unsupervised
    )
    mixed_labels = _mix(box, labels_p)
    assert torch.equal(mixed_labels[1][box[1]], labels_p[0][box[1]])  # inside the box: the previous crop's labels


def step_batch(name):
    """(labeled, unlabeled) items of one step of method ``name``: two 16x16 images each, 4 classes."""
    g = torch.Generator().manual_seed(0)
    n, s = 2, 16
    labeled = [torch.randn(n, 3, s, s, generator=g), torch.randint(0, 4, (n, s, s), generator=g)]
    weak = torch.randn(n, 3, s, s, generator=g)
    pad, box = torch.zeros(n, s, s, dtype=torch.bool), torch.zeros(n, s, s, dtype=torch.bool)
    box[:, 2:9, 3:12] = True
    unlabeled = {
        "supervised": None,
        "selftrain": [weak, labeled[1]],
        "unimatch": [weak, weak.flip(-1), weak.flip(-2), pad, box, box],
        "classmix": [weak, pad],
    }.get(name, [weak, weak.flip(-1), pad, box])
    return labeled, unlabeled


@pytest.mark.parametrize("name", ["fixmatch", "unimatch", "pseudoseg", "classmix"])
def test_rampup_scales_the_unsupervised_term_only(name):
    thresholds = {
        "fixmatch": ["semi.fixmatch.threshold=0"],
        "unimatch": ["semi.unimatch.threshold=0"],
        "classmix": ["semi.classmix.confidence=0"],
    }
    config = load_config(None, [f"method={name}", "semi.unsupervised_weight=2.0", *thresholds.get(name, [])])
    method = get(name)(config, 4)
    labeled, unlabeled = step_batch(name)
    outs = []
    for rampup in (1.0, 0.25):
        torch.manual_seed(1)
        model = get(name).model_kwargs(config, {"width": 8})
        model = DeepLabV3Plus(4, **model).eval()
        ctx = StepContext(model, model, config["semi"], 255, 0, torch.Generator().manual_seed(3), 4, rampup)
        outs.append(method.step(ctx, labeled, unlabeled))
    full, ramped = outs
    assert torch.equal(full.unsupervised, ramped.unsupervised) and float(full.unsupervised) > 0
    torch.testing.assert_close(full.loss - full.supervised, 2.0 * full.unsupervised)
    torch.testing.assert_close(ramped.loss - ramped.supervised, 0.5 * ramped.unsupervised)


@pytest.mark.parametrize("name", ["supervised", "selftrain", "fixmatch", "unimatch", "u2pl", "pseudoseg", "classmix"])
def test_supervised_loss_ohem_is_the_labeled_term_of_every_method(name):
    """train.supervised_loss=ohem: the step's supervised term is OHEM on the labeled logits, and it
    differs from cross-entropy once min_kept is below the batch's pixels."""
    labeled, unlabeled = step_batch(name)
    sups = {}
    for loss in ("ce", "ohem"):
        overrides = [f"method={name}", f"train.supervised_loss={loss}", "train.ohem.min_kept=50"]
        extra = ["semi.selftrain.pseudo_dir=x"] if name == "selftrain" else []
        config = load_config(None, overrides + extra + ["train.ohem.threshold=0.2"])
        method = get(name)(config, 4)
        expected = sf.OhemCrossEntropy if loss == "ohem" else sf.PseudoLabelCrossEntropy
        assert isinstance(method.supervised_loss, expected)
        torch.manual_seed(1)
        model = DeepLabV3Plus(4, **get(name).model_kwargs(config, {"width": 8})).eval()
        ctx = StepContext(model, model, config["semi"], 255, 0, torch.Generator().manual_seed(3), 4)
        sups[loss] = method.step(ctx, labeled, unlabeled).supervised
    assert torch.isfinite(sups["ohem"]) and not torch.equal(sups["ohem"], sups["ce"])
