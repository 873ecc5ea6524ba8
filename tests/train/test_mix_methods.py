"""ClassMix and DepthMix training (DACS's mean teacher; Hoyer et al.'s DepthMix): the mixed
targets equal the argmax of the mixed teacher softmax, the loss is weighted by the confident share,
labeled crops mix in with their ground truth, DepthMix keeps the nearer pixel, and runs resume."""

import pytest
import torch
import torch.nn.functional as F

from semiseg_fast.depth.objective import depth_task_loss
from semiseg_fast.models import DeepLabV3Plus, model_outputs
from semiseg_fast.train.config import load_config
from semiseg_fast.train.methods import classmix, get
from semiseg_fast.train.methods.base import StepContext, resized
from semiseg_fast.train.methods.depthmix import depth_weight as depthmix_depth_weight

from .helpers import whole_and_resumed

N_CLASSES, SIZE = 4, 16


def batch(n_unlabeled=3):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, N_CLASSES, (2, SIZE, SIZE), generator=g)
    labels[:, :3] = 255  # padding of the labeled crops
    weak = torch.randn(n_unlabeled, 3, SIZE, SIZE, generator=g)
    pad = torch.zeros(n_unlabeled, SIZE, SIZE, dtype=torch.bool)
    pad[:, -4:] = True
    return [torch.randn(2, 3, SIZE, SIZE, generator=g), labels], [weak, pad]


def networks(depth_head=False):
    """A student, and a teacher whose labels vary from pixel to pixel with confidences spread
    over (0.25, 1): a 1x1 convolution of the image at half resolution (upsampled in the step)."""
    torch.manual_seed(1)
    student = DeepLabV3Plus(N_CLASSES, width=8, rep_dim=None, depth_head=depth_head).eval()
    torch.manual_seed(2)
    teacher = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Conv2d(3, N_CLASSES, 1))
    teacher[1].weight.data *= 4
    return student, teacher


def step(name, overrides, labeled, unlabeled, monkeypatch, depth=None):
    """One step of ``name`` without colour jitter, returning (output, mask, target of the student)."""
    config = load_config(None, [f"method={name}", "semi.strong_color=false", *overrides])
    method = get(name).__new__(get(name))
    classmix.ClassMix.__init__(method, config, N_CLASSES)
    if depth is not None:
        method.depth = depth
    seen = {}
    real_masks, real_ce = method.mix_masks, classmix.pseudo_label_cross_entropy

    def mix_masks(*args):
        seen["mask"] = real_masks(*args)
        return seen["mask"]

    def cross_entropy(logits, target, **kwargs):
        seen["target"] = target
        return real_ce(logits, target, **kwargs)

    method.mix_masks = mix_masks
    monkeypatch.setattr(classmix, "pseudo_label_cross_entropy", cross_entropy)
    student, teacher = networks(get(name).model_kwargs(config, {}).get("depth_head", False))
    ctx = StepContext(student, teacher, config["semi"], 255, 0, torch.Generator().manual_seed(3), N_CLASSES)
    return method.step(ctx, labeled, unlabeled), seen["mask"], seen["target"]


def following(t):
    return t.roll(-1, dims=0)


def test_classmix_learns_the_argmax_of_the_mixed_softmax_weighted_by_the_confident_share(monkeypatch):
    labeled, (weak, pad) = batch()
    overrides = ["semi.classmix.confidence=0.3", "semi.classmix.mix_labeled=false"]
    out, mask, _ = step("classmix", overrides, labeled, [weak, pad], monkeypatch)
    student, teacher = networks()
    with torch.no_grad():
        probs = resized(model_outputs(teacher(weak))[0], weak.shape[-2:]).softmax(1)
    # ClassMix's mask: whole classes of the teacher's labels of crop i, about half of them
    label_i = probs.argmax(1)
    for i in range(weak.shape[0]):
        inside, outside = label_i[i][mask[i]].unique(), label_i[i][~mask[i] & ~pad[i]].unique()
        assert not set(inside.tolist()) & set(outside.tolist()) and inside.numel() > 0
    conf, label = torch.where(mask[:, None], probs, following(probs)).max(1)
    valid = ~torch.where(mask, pad, following(pad))
    weight = (valid & (conf >= 0.3)).sum() / valid.sum()
    assert 0 < float(weight) < 1
    mixed = torch.where(mask[:, None], weak, following(weak))
    logits = resized(model_outputs(student(torch.cat([labeled[0], mixed])))[0], weak.shape[-2:])[2:]
    expected = weight * F.cross_entropy(logits, label.masked_fill(~valid, 255), ignore_index=255)
    torch.testing.assert_close(out.unsupervised, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.mask_ratio, weight)


def test_labeled_crops_mix_in_with_their_ground_truth_at_full_confidence(monkeypatch):
    labeled, unlabeled = batch()
    n_u = unlabeled[0].shape[0]
    out, mask, target = step(
        "classmix", ["semi.classmix.mix_labeled=true", "semi.classmix.confidence=1.0"], labeled, unlabeled, monkeypatch
    )
    assert mask.shape[0] == target.shape[0] == n_u + 2  # every crop of the pool makes a mix
    _, teacher = networks()
    with torch.no_grad():
        teacher_label = resized(model_outputs(teacher(unlabeled[0]))[0], (SIZE, SIZE)).argmax(1)
    labels = torch.cat([teacher_label.masked_fill(unlabeled[1], 255), labeled[1]])
    pad = torch.cat([unlabeled[1], labeled[1] == 255])
    valid = ~torch.where(mask, pad, following(pad))
    assert torch.equal(target, torch.where(mask, labels, following(labels)).masked_fill(~valid, 255))
    # at confidence 1 only the ground truth's pixels count: the teacher's softmax never reaches 1 here
    labeled_crop = (torch.arange(n_u + 2) >= n_u)[:, None, None]
    from_labeled = torch.where(mask, labeled_crop, following(labeled_crop))
    torch.testing.assert_close(out.mask_ratio, (valid & from_labeled).sum() / valid.sum())


class FixedDisparity(torch.nn.Module):
    def __init__(self, disparity):
        super().__init__()
        self.disparity = disparity

    def forward(self, images):
        return [self.disparity[:, None]]


def normalised(disparity, pad, k):
    """Crop k's disparity min-max normalised over its image pixels."""
    d = disparity[k]
    lo, hi = d[~pad[k]].min(), d[~pad[k]].max()
    return (d - lo) / (hi - lo)


def class_averaged(disparity, labels, pad):
    """Each crop's disparity averaged over each of its classes (padding left out and kept)."""
    out = disparity.clone()
    for i in range(disparity.shape[0]):
        for c in labels[i][~pad[i]].unique():
            region = (labels[i] == c) & ~pad[i]
            out[i][region] = disparity[i][region].mean()
    return out


def teacher_labels(weak):
    _, teacher = networks()
    with torch.no_grad():
        return resized(model_outputs(teacher(weak))[0], weak.shape[-2:]).argmax(1)


@pytest.mark.parametrize("level", ["pixel", "class"])
def test_depthmix_keeps_the_nearer_pixel_or_class_and_never_pastes_padding(monkeypatch, depth_run, level):
    labeled, (weak, pad) = batch()
    pad[1, :, :5] = True  # crop 1 has padding on the left as well
    disparity = torch.rand(weak.shape[0], SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    overrides = [
        f"semi.depthmix.depth_run={depth_run}",
        f"semi.depthmix.level={level}",
        "semi.depthmix.margin=0.05",
        "semi.depthmix.mix_labeled=false",
        "semi.depthmix.depth_weight=0",  # the fixed disparity is the unlabeled crops' only
    ]
    _, mask, _ = step("depthmix", overrides, labeled, [weak, pad], monkeypatch, FixedDisparity(disparity))
    if level == "class":  # each class the teacher predicts in a crop at its mean disparity
        disparity = class_averaged(disparity, teacher_labels(weak), pad)
    for i in range(weak.shape[0]):
        j = (i + 1) % weak.shape[0]
        expected = ~pad[i] & (pad[j] | (normalised(disparity, pad, i) >= normalised(disparity, pad, j) - 0.05))
        assert torch.equal(mask[i], expected)
        assert 0 < int(mask[i].sum()) < int((~pad[i]).sum())  # both crops show in every mix


class DisparityOfCrops(torch.nn.Module):
    """The unlabeled crops' disparity, the labeled ones', or both (unlabeled first), by batch size."""

    def __init__(self, unlabeled, labeled):
        super().__init__()
        both = torch.cat([unlabeled, labeled])
        self.maps = {len(unlabeled): unlabeled, len(labeled): labeled, len(both): both}

    def forward(self, images):
        return [self.maps[images.shape[0]][:, None]]


@pytest.mark.parametrize("mix_labeled", [True, False])
def test_the_depth_task_learns_the_disparity_of_each_labeled_crop_and_mix(monkeypatch, depth_run, mix_labeled):
    labeled, (weak, pad) = batch()
    g = torch.Generator().manual_seed(6)
    disparity_u, disparity_l = torch.rand(3, SIZE, SIZE, generator=g), torch.rand(2, SIZE, SIZE, generator=g)
    network = DisparityOfCrops(disparity_u, disparity_l)
    overrides = [f"semi.depthmix.depth_run={depth_run}", f"semi.depthmix.mix_labeled={str(mix_labeled).lower()}"]
    loss = {}
    for w in (0.0, 0.5):
        settings = [*overrides, f"semi.depthmix.depth_weight={w}"]
        out, mask, _ = step("depthmix", settings, labeled, [weak, pad], monkeypatch, network)
        loss[w] = out.loss
    images, disparity, pads = weak, disparity_u, pad
    if mix_labeled:
        images, disparity = torch.cat([weak, labeled[0]]), torch.cat([disparity_u, disparity_l])
        pads = torch.cat([pad, labeled[1] == 255])
    target = torch.cat([disparity_l, torch.where(mask, disparity, following(disparity))])[:, None]
    valid = torch.cat([labeled[1] != 255, ~torch.where(mask, pads, following(pads))])
    student, _ = networks(depth_head=True)
    with torch.no_grad():
        mixed = torch.where(mask[:, None], images, following(images))
        expected = 0.5 * depth_task_loss(student(torch.cat([labeled[0], mixed]))["disparity"], target, valid)
    assert float(expected) > 0
    torch.testing.assert_close(loss[0.5] - loss[0.0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("disparity", ["network", "truth"])
def test_a_killed_depthmix_run_resumes_exactly_and_leaves_the_depth_network_frozen(
    tiny_config, tmp_path, depth_run, monkeypatch, disparity
):
    """With the true disparity, the labeled crops bring theirs through the loader into the mix;
    with the network's, the depth task trains beside it."""
    task = "semi.depthmix.depth_weight=0.1" if disparity == "network" else "semi.depthmix.mix_labeled=true"
    run = ["--config", tiny_config, "method=depthmix", f"model.pretrained=depth:{depth_run}", task,
           f"semi.depthmix.disparity={disparity}", "train.progress=false", "deterministic=true"]  # fmt: skip
    whole, resumed = whole_and_resumed(run, tmp_path, monkeypatch)
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    if disparity == "network":
        assert any(k.startswith("depth_head.") for k in whole["model"])
        frozen = torch.load(f"{depth_run}/depth.pt")["depth"]
        assert all(torch.equal(whole["criterion"][k], v) for k, v in frozen.items())


def test_depthmix_without_a_depth_run_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="semi.depthmix.depth_run expected a depth run's folder"):
        load_config(None, ["method=depthmix"])
    with pytest.raises(ValueError, match="semi.depthmix.depth_run expected a finished depth run.*depth.pt"):
        load_config(None, ["method=depthmix", f"semi.depthmix.depth_run={tmp_path}"])
    (tmp_path / "depth.pt").write_bytes(b"not a torch file")
    config = load_config(None, ["method=depthmix", f"semi.depthmix.depth_run={tmp_path}"])
    with pytest.raises(ValueError, match="semi.depthmix.depth_run: .* holds no depth network"):
        get("depthmix")(config, N_CLASSES)


def test_the_depth_task_is_on_by_default_where_it_can_train(depth_run):
    depthmix = get("depthmix")
    run = f"semi.depthmix.depth_run={depth_run}"
    for overrides, weight in (
        ([run], 0.1),
        ([run, "semi.depthmix.depth_weight=0.3"], 0.3),
        ([run, "semi.depthmix.depth_weight=0"], 0.0),
        (["semi.depthmix.disparity=truth"], 0.0),  # the task learns the depth network's depth
        ([run, "model.name=tests.train.toy_method:Model"], 0.0),  # the depth head is the built-in model's
    ):
        config = load_config(None, ["method=depthmix", *overrides])
        assert depthmix_depth_weight(config) == weight
        assert depthmix.model_kwargs(config, {}).get("depth_head", False) == (weight > 0)
    with pytest.raises(ValueError, match="semi.depthmix.depth_weight expected 0 with a model of your own"):
        load_config(
            None, ["method=depthmix", run, "semi.depthmix.depth_weight=0.1", "model.name=tests.train.toy_method:Model"]
        )


def test_the_true_disparity_is_cropped_with_its_image():
    """semi.depthmix.disparity=truth: the view's crops are those of the plain view, and the third
    item is the image's true disparity rescaled, padded, cropped and flipped with it."""
    from semiseg_fast.data import Subset, SyntheticScenes, weak_augment
    from semiseg_fast.data.clips import true_disparity
    from semiseg_fast.train.data import LabeledView, WeakView
    from semiseg_fast.train.methods.depthmix import TrueDisparity

    subset = Subset(SyntheticScenes(6, (16, 16), seed=0), [3, 1])
    data_cfg = load_config(None, ["data.crop_size=20", "data.scale_range=[0.75, 1.5]"])["data"]
    truth = torch.from_numpy(true_disparity(0, 3, (16, 16)))
    image, label = subset[0]
    padded = False
    for seed in range(6):
        weak, pad = WeakView(subset, data_cfg)[(0, seed)]
        weak_t, pad_t, disparity = WeakView(subset, data_cfg, TrueDisparity(subset))[(0, seed)]
        assert torch.equal(weak, weak_t) and torch.equal(pad, pad_t)
        g = torch.Generator().manual_seed(seed)
        *_, expected = weak_augment(image, label, 20, g, (0.75, 1.5), extras=truth[None])
        assert torch.equal(disparity, expected[0])
        assert bool((disparity[~pad] > 0).all()) and bool((disparity[pad] == 0).all())
        padded |= bool(pad.any())
    assert padded  # some crops are padded: the map's padding is checked too
    labeled = LabeledView(subset, data_cfg, TrueDisparity(subset))[(0, 5)]
    assert torch.equal(labeled[0], WeakView(subset, data_cfg)[(0, 5)][0])  # the same crop, with its label
    assert torch.equal(labeled[2], WeakView(subset, data_cfg, TrueDisparity(subset))[(0, 5)][2])
    with pytest.raises(ValueError, match="semi.depthmix.disparity expected network"):
        load_config(None, ["method=depthmix", "semi.depthmix.disparity=truth", "data.name=voc", "data.root=."])
    with pytest.raises(ValueError, match="semi.depthmix.depth_weight expected 0 with disparity=truth"):
        load_config(None, ["method=depthmix", "semi.depthmix.disparity=truth", "semi.depthmix.depth_weight=0.1"])


@pytest.mark.parametrize("level", ["pixel", "class"])
def test_with_the_true_disparity_labeled_crops_mix_by_theirs(monkeypatch, level):
    labeled, (weak, pad) = batch()
    g = torch.Generator().manual_seed(5)
    disparity_u = torch.rand(weak.shape[0], SIZE, SIZE, generator=g)
    disparity_l = torch.rand(2, SIZE, SIZE, generator=g)
    overrides = [
        "semi.depthmix.disparity=truth",
        f"semi.depthmix.level={level}",
        "semi.depthmix.margin=0.0",
        "semi.depthmix.mix_labeled=true",
    ]
    _, mask, _ = step("depthmix", overrides, [*labeled, disparity_l], [weak, pad, disparity_u], monkeypatch)
    disparity, pads = torch.cat([disparity_u, disparity_l]), torch.cat([pad, labeled[1] == 255])
    assert mask.shape[0] == weak.shape[0] + 2
    if level == "class":  # the teacher's classes in unlabeled crops, the ground truth's in labeled ones
        disparity = class_averaged(disparity, torch.cat([teacher_labels(weak), labeled[1]]), pads)
    for i in range(mask.shape[0]):
        j = (i + 1) % mask.shape[0]
        nearer = normalised(disparity, pads, i) >= normalised(disparity, pads, j)
        assert torch.equal(mask[i], ~pads[i] & (pads[j] | nearer))


def test_a_mix_needs_two_crops():
    with pytest.raises(ValueError, match="data.unlabeled_batch_size expected at least 2"):
        load_config(None, ["method=classmix", "data.unlabeled_batch_size=1", "semi.classmix.mix_labeled=false"])
    load_config(None, ["method=classmix", "data.unlabeled_batch_size=1", "semi.classmix.mix_labeled=true"])
