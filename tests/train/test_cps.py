"""method=cps: two networks teaching each other, their checkpoints, evaluation and resume."""

import csv

import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from semiseg_fast import reference
from semiseg_fast.depth.objective import depth_task_loss
from semiseg_fast.mixing import class_means
from semiseg_fast.models import DeepLabV3Plus, model_outputs
from semiseg_fast.train import cli
from semiseg_fast.train.checkpoint import save_atomic
from semiseg_fast.train.config import load_config
from semiseg_fast.train.data import RunData
from semiseg_fast.train.loop import Trainer, train
from semiseg_fast.train.methods import cps, get, register
from semiseg_fast.train.methods.base import StepContext, mix
from semiseg_fast.train.methods.cps import DEPTH_MARGIN, mask_kind
from semiseg_fast.train.methods.depthmix import nearer_masks

from .helpers import train_killed_after

RUN = ["method=cps", "deterministic=true", "train.progress=false", "train.amp=off"]


def _rows(folder):
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


def cps_batch(n=3, s=16):
    g = torch.Generator().manual_seed(0)
    labeled = [torch.randn(2, 3, s, s, generator=g), torch.randint(0, 4, (2, s, s), generator=g)]
    images_u, pad = torch.randn(n, 3, s, s, generator=g), torch.zeros(n, s, s, dtype=torch.bool)
    pad[:, -2:] = True
    return labeled, images_u, pad, sf.mixing.cps_box_masks(n, s, s, g)


def conv_networks(*seeds):
    """Networks whose labels vary from pixel to pixel with the input: a 1x1 convolution at half resolution."""
    nets = []
    for seed in seeds:
        torch.manual_seed(seed)
        nets.append(torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Conv2d(3, 4, 1)))
        nets[-1][1].weight.data *= 4
    return nets


def upsampled(net, images):
    size = images.shape[-2:]
    return torch.nn.functional.interpolate(model_outputs(net(images))[0], size, mode="bilinear", align_corners=True)


def expected_cps(nets, images_u, pad, box, threshold, teachers=None):
    """cps_loss's reference on the mixes, each network's targets mixed from its logits (or its
    teacher's) on the sources."""
    with torch.no_grad():
        on_mix = [upsampled(net, mix(box, images_u)) for net in nets]
        targets = [mix(box, upsampled(t, images_u)).softmax(dim=1).max(dim=1)[::-1] for t in teachers or nets]
    return reference.cps_loss(*on_mix, mix(box, pad), threshold, targets_a=targets[0], targets_b=targets[1])


@pytest.mark.parametrize("fused,threshold", [(True, 0.0), (False, 0.0), (True, 0.26)])
def test_step_is_cps_loss_on_targets_of_the_mixed_logits(fused, threshold):
    """Each network's targets for the CutMixed images are the argmax and confidence of its CutMixed
    logits on the sources (mixed from one pass each); the unsupervised term is cps_loss on them."""
    overrides = [f"train.fused_upsample={str(fused).lower()}", f"semi.cps.threshold={threshold}"]
    cps_code = ["semi.cps.mask=box", "semi.cps.strong_color=false", "semi.cps.targets=networks"]
    config = load_config(None, ["method=cps", *cps_code, *overrides])
    labeled, images_u, pad, box = cps_batch(n=2)
    nets = conv_networks(1, 2)
    ctx = StepContext(nets[0], None, config["semi"], 255, 0, torch.Generator(), 4, peer=nets[1])
    out = get("cps")(config, 4).step(ctx, labeled, [images_u, pad, box])
    expected = expected_cps(nets, images_u, pad, box, threshold)
    torch.testing.assert_close(out.unsupervised, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss, out.supervised + out.unsupervised)
    assert 0 < float(out.mask_ratio) <= 1 and float(out.unsupervised) > 0


def test_with_ema_targets_the_teachers_label_the_sources_in_eval_mode():
    config = load_config(None, ["method=cps", "semi.cps.mask=box", "semi.cps.strong_color=false"])
    labeled, images_u, pad, box = cps_batch(n=2)
    nets, teachers = conv_networks(1, 2), [t.train() for t in conv_networks(3, 4)]
    semi = config["semi"]
    ctx = StepContext(nets[0], teachers[0], semi, 255, 0, torch.Generator(), 4, peer=nets[1], peer_teacher=teachers[1])
    method = get("cps")(config, 4)
    networks = load_config(None, ["method=cps", "semi.cps.targets=networks"])
    assert method.uses_teacher and not get("cps")(networks, 4).uses_teacher
    out = method.step(ctx, labeled, [images_u, pad, box])
    assert all(t.training for t in teachers)  # back in the mode they came in
    expected = expected_cps(nets, images_u, pad, box, 0.0, teachers=[t.eval() for t in teachers])
    torch.testing.assert_close(out.unsupervised, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(out.unsupervised, expected_cps(nets, images_u, pad, box, 0.0))


def test_ema_targets_are_refused_with_a_shared_teacher():
    with pytest.raises(ValueError, match="semi.cps.targets expected networks with semi.teacher=shared"):
        load_config(None, ["method=cps", "semi.cps.targets=ema", "semi.teacher=shared"])


class FixedDisparity(torch.nn.Module):
    def __init__(self, disparity):
        super().__init__()
        self.disparity = torch.nn.Parameter(disparity, requires_grad=False)

    def forward(self, images):
        return [self.disparity[:, None]]


@pytest.mark.parametrize("mask", ["class", "depth"])
def test_class_and_depth_masks_follow_network_1s_classes_and_the_mixes_get_colour(mask, depth_run, monkeypatch):
    """mask=class pastes half the classes network 1 predicts in crop i - 1 over crop i (ClassMix's
    draw), mask=depth the classes it puts nearer at their mean disparity (DepthMix's level=class);
    the pseudo-labels come from the sources as with boxes, and the mixes are colour-jittered."""
    overrides = [f"semi.cps.mask={mask}", f"semi.cps.depth_run={depth_run}", "semi.cps.targets=networks"]
    config = load_config(None, ["method=cps", *overrides, "semi.cps.depth_weight=0", "semi.cps.mix_labeled=false"])
    labeled, images_u, pad, _ = cps_batch()
    nets = conv_networks(1, 2)
    method = get("cps")(config, 4)
    disparity = torch.rand(pad.shape, generator=torch.Generator().manual_seed(4))
    method.depth = FixedDisparity(disparity)
    jittered = []
    monkeypatch.setattr(cps, "jitter_and_blur", lambda x, g: jittered.append(x) or x)
    ctx = StepContext(nets[0], None, config["semi"], 255, 0, torch.Generator().manual_seed(3), 4, peer=nets[1])
    out = method.step(ctx, labeled, [images_u, pad, None])

    with torch.no_grad():
        labels = upsampled(nets[0], images_u).argmax(1).masked_fill(pad, 255)
    if mask == "class":
        keep = sf.mixing.classmix_masks(labels, torch.Generator().manual_seed(3))
    else:
        keep = nearer_masks(disparity, labels, pad, 4, 255, DEPTH_MARGIN)
        assert torch.equal(
            keep, nearer_masks(class_means(disparity, labels, 4), labels, pad, 4, 255, DEPTH_MARGIN, "pixel")
        )
    box = keep.roll(1, dims=0)
    assert all(0 < int(b.sum()) < b.numel() for b in box)
    torch.testing.assert_close(out.unsupervised, expected_cps(nets, images_u, pad, box, 0.0), rtol=1e-4, atol=1e-6)
    assert len(jittered) == 1 and torch.equal(jittered[0], mix(box, images_u))


def test_the_mask_defaults_to_depth_with_a_depth_run_and_is_refused_without_one(depth_run, tmp_path):
    for method in ("cps", "rrn"):
        assert mask_kind(load_config(None, [f"method={method}"]), method) == "class"
        for given in (f"semi.{method}.depth_run={depth_run}", f"model.pretrained=depth:{depth_run}"):
            assert mask_kind(load_config(None, [f"method={method}", given]), method) == "depth"
        with pytest.raises(ValueError, match=f"semi.{method}.depth_run expected a depth run's folder"):
            load_config(None, [f"method={method}", f"semi.{method}.mask=depth"])
        with pytest.raises(ValueError, match=f"semi.{method}.depth_run expected a finished depth run's folder"):
            load_config(None, [f"method={method}", f"semi.{method}.depth_run={tmp_path}"])


def test_labeled_crops_mix_in_with_their_ground_truth_for_both_networks(monkeypatch):
    """mix_labeled: the labeled crops join the mixing after the unlabeled ones, their ground truth
    both networks' target at confidence 1, their padding ignored like the unlabeled crops'."""
    overrides = ["semi.cps.mask=class", "semi.cps.mix_labeled=true", "semi.cps.targets=networks"]
    config = load_config(None, ["method=cps", "semi.strong_color=false", *overrides])
    labeled, images_u, pad, _ = cps_batch()
    labeled[1][:, :2] = 255  # padding of the labeled crops
    nets = conv_networks(1, 2)
    ctx = StepContext(nets[0], None, config["semi"], 255, 0, torch.Generator().manual_seed(3), 4, peer=nets[1])
    seen = {}
    monkeypatch.setattr(cps, "cps_loss", lambda *args, **kwargs: seen.update(args=args, **kwargs) or (args[0].sum(), 1))
    get("cps")(config, 4).step(ctx, labeled, [images_u, pad, None])

    images_l, labels_l = labeled
    images, pads = torch.cat([images_u, images_l]), torch.cat([pad, labels_l == 255])
    with torch.no_grad():
        stats = [upsampled(net, images_u).softmax(1).max(1) for net in nets]
    gt_conf = (labels_l != 255).float()
    sources = [(torch.cat([s.indices, labels_l]), torch.cat([s.values, gt_conf])) for s in stats]
    keep = sf.mixing.classmix_masks(sources[0][0].masked_fill(pads, 255), torch.Generator().manual_seed(3))
    box = keep.roll(1, dims=0)
    assert all(0 < int(b.sum()) < b.numel() for b in box)
    assert torch.equal(seen["ignore_mask"], mix(box, pads))
    for name, (label, conf) in zip(("targets_a", "targets_b"), sources):
        valid = ~mix(box, pads)
        assert torch.equal(seen[name][0][valid], mix(box, label)[valid].to(seen[name][0].dtype))
        torch.testing.assert_close(seen[name][1][valid], mix(box, conf)[valid])
    with torch.no_grad():
        expected = model_outputs(nets[0](mix(box, images)))[
            0
        ]  # network 1's logits on the mixes, as the loss reads them
    torch.testing.assert_close(seen["args"][0].detach(), expected, rtol=1e-4, atol=1e-5)


def test_mixing_labeled_crops_is_refused_with_boxes_and_one_unlabeled_crop_needs_them():
    for method in ("cps", "rrn"):
        with pytest.raises(ValueError, match=f"semi.{method}.mix_labeled expected false with mask=box"):
            load_config(None, [f"method={method}", f"semi.{method}.mask=box", f"semi.{method}.mix_labeled=true"])
        one = "data.unlabeled_batch_size=1"
        with pytest.raises(ValueError, match=f"data.unlabeled_batch_size expected at least 2 .* semi.{method}.mix_l"):
            load_config(None, [f"method={method}", one])
        load_config(None, [f"method={method}", one, f"semi.{method}.mix_labeled=true"])


class ImageDisparity(torch.nn.Module):
    """A disparity computed from each crop itself, whatever the batch holds."""

    def forward(self, images):
        return [torch.sigmoid(2 * images.mean(1, keepdim=True))]


@pytest.mark.parametrize("mix_labeled", [False, True])
def test_the_depth_task_trains_each_network_on_the_labeled_crops_and_mixes_disparity(depth_run, mix_labeled):
    labeled, _, pad, _ = cps_batch()
    labeled[1][:, :2] = 255  # padding of the labeled crops
    g = torch.Generator().manual_seed(6)
    # smooth images (near and far regions, not per-pixel noise that the head's resolution averages out)
    smooth = lambda n: F.interpolate(torch.randn(n, 3, 4, 4, generator=g), pad.shape[1:], mode="bilinear")  # noqa: E731
    images_u, labeled[0] = smooth(3), smooth(2)
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(DeepLabV3Plus(4, width=8, rep_dim=None, depth_head=True).eval())
    loss, boxes = {}, []
    for w in (0.0, 0.5):
        overrides = [f"semi.cps.depth_weight={w}", f"semi.cps.mix_labeled={str(mix_labeled).lower()}"]
        overrides += ["semi.cps.mask=class", f"semi.cps.depth_run={depth_run}", "semi.cps.targets=networks"]
        config = load_config(None, ["method=cps", "semi.strong_color=false", *overrides])
        method = get("cps")(config, 4)
        method.depth = ImageDisparity()
        method.class_masks = lambda *args, real=method.class_masks: boxes.append(real(*args)) or boxes[-1]
        ctx = StepContext(nets[0], None, config["semi"], 255, 0, torch.Generator().manual_seed(3), 4, peer=nets[1])
        loss[w] = method.step(ctx, labeled, [images_u, pad]).loss
    box = boxes[0]
    assert torch.equal(boxes[1], box) and len(box) == (5 if mix_labeled else 3)
    images_l, labels_l = labeled
    images, pads = images_u, pad
    if mix_labeled:
        images, pads = torch.cat([images_u, images_l]), torch.cat([pad, labels_l == 255])
    disparity = ImageDisparity()(torch.cat([images_l, images]))[0][:, 0]
    target = torch.cat([disparity[:2], mix(box, disparity[2:])])[:, None]
    valid = torch.cat([labels_l != 255, ~mix(box, pads)])
    with torch.no_grad():
        inputs = torch.cat([images_l, mix(box, images)])
        expected = sum(0.5 * depth_task_loss(net(inputs)["disparity"], target, valid) for net in nets)
    assert float(expected) > 0
    torch.testing.assert_close(loss[0.5] - loss[0.0], expected, rtol=1e-4, atol=1e-6)


def test_the_depth_task_and_the_labeled_crops_mixes_are_on_by_default_with_the_depth_masks(depth_run):
    for method in ("cps", "rrn"):
        run = f"semi.{method}.depth_run={depth_run}"
        for overrides, weight in (
            ([run], 0.1),
            ([f"model.pretrained=depth:{depth_run}"], 0.1),
            ([run, f"semi.{method}.depth_weight=0.3"], 0.3),
            ([run, f"semi.{method}.depth_weight=0"], 0.0),
            ([run, f"semi.{method}.mask=class"], 0.0),
            ([run, f"semi.{method}.mask=box", f"semi.{method}.depth_weight=0.2"], 0.2),
            ([], 0.0),
            ([run, "model.name=tests.train.toy_method:Model"], 0.0),  # the depth head is the built-in model's
        ):
            config = load_config(None, [f"method={method}", *overrides])
            assert cps.depth_weight(config, method) == weight, overrides
            assert cps.mixes_labeled(config, method) == (mask_kind(config, method) == "depth")
            assert get(method).model_kwargs(config, {}).get("depth_head", False) == (weight > 0)
        for given, mask in (("false", "depth"), ("true", "class")):
            config = load_config(
                None, [f"method={method}", run, f"semi.{method}.mix_labeled={given}", f"semi.{method}.mask={mask}"]
            )
            assert cps.mixes_labeled(config, method) == (given == "true")
        with pytest.raises(ValueError, match=f"semi.{method}.depth_run expected a depth run's folder"):
            load_config(None, [f"method={method}", f"semi.{method}.depth_weight=0.1"])
        toy = "model.name=tests.train.toy_method:Model"
        with pytest.raises(ValueError, match=f"semi.{method}.depth_weight expected 0 with a model of your own"):
            load_config(None, [f"method={method}", run, f"semi.{method}.depth_weight=0.1", toy])


def test_the_box_masks_are_drawn_only_where_the_step_uses_them():
    g = torch.Generator().manual_seed(0)
    pool = [(torch.rand(3, 64, 64, generator=g), torch.zeros(64, 64, dtype=torch.long)) for _ in range(2)]
    items = {}
    for mask in ("box", "class"):
        method = get("cps")(load_config(None, ["method=cps", f"semi.cps.mask={mask}"]), 4)
        items[mask] = method.unlabeled_view(RunData(pool, pool, pool, 4, list("abcd")))[(1, 7)]
    (image, pad, box), plain = items["box"], items["class"]
    assert len(plain) == 2 and torch.equal(plain[0], image) and torch.equal(plain[1], pad)
    assert box.dtype == torch.bool and box.shape == pad.shape and 0 < int(box.sum()) < box.numel()


def test_trains_two_networks_reports_both_and_their_average(tiny_config, tmp_path):
    out = tmp_path / "cps"
    result = train(load_config(tiny_config, [*RUN, f"out_dir={out}"]))
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 18 and all(state[k] is not None for k in ("peer", "teacher", "peer_teacher"))
    model, peer = state["model"], state["peer"]
    assert model.keys() == peer.keys() and not all(torch.equal(model[k], peer[k]) for k in model)
    assert len(state["optimizer"]["param_groups"]) == 4  # encoder and head of each network
    evaluated = [r for r in _rows(out) if r["miou"]]
    assert len(evaluated) == 3 and all(r["miou_network_2"] and r["miou_averaged"] for r in evaluated)
    assert result["miou_network_2"] == pytest.approx(float(evaluated[-1]["miou_network_2"]))
    assert result["miou_averaged"] == pytest.approx(float(evaluated[-1]["miou_averaged"]))


def test_with_ema_targets_evaluation_reports_the_ema_copies(tiny_config, tmp_path, monkeypatch):
    evaluated = []
    original = Trainer._evaluate

    def recording(self, model=None):
        evaluated.append(model if model is not None else self.eval_model)
        if len(evaluated) == 3:
            assert evaluated[0] is self.teacher and evaluated[1] is self.peer_teacher
            assert list(evaluated[2].networks) == [self.teacher, self.peer_teacher]
        return original(self, model)

    monkeypatch.setattr(Trainer, "_evaluate", recording)
    train(load_config(tiny_config, [*RUN, "semi.cps.targets=ema", "train.steps=4", f"out_dir={tmp_path}"]))
    assert len(evaluated) >= 3


def test_single_network_methods_leave_the_new_columns_empty(tiny_config, tmp_path):
    cli.main(["--config", tiny_config, "method=supervised", "train.progress=false", f"out_dir={tmp_path}"])
    rows = [r for r in _rows(tmp_path) if r["miou"]]
    assert rows and all(r["miou_network_2"] == "" and r["miou_averaged"] == "" for r in rows)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["peer"] is None


@pytest.mark.parametrize("targets,depth", [("networks", False), ("ema", False), ("ema", True)])
def test_a_killed_run_resumes_both_networks_to_the_same_weights(
    targets, depth, tiny_config, tmp_path, monkeypatch, depth_run
):
    """With a depth run: by its masks, with the depth task (depth heads in both networks) and the
    labeled crops in the mixes."""
    run = [*RUN, f"semi.cps.targets={targets}"]
    if depth:
        run.append(f"semi.cps.depth_run={depth_run}")
    cli.main(["--config", tiny_config, *run, f"out_dir={tmp_path / 'whole'}"])

    # dies after step 7; its last checkpoint is step 6's
    train_killed_after(7, ["--config", tiny_config, *run, f"out_dir={tmp_path / 'killed'}"], monkeypatch)
    cli.main(["--resume", str(tmp_path / "killed"), "train.progress=false"])
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    keys = ("model", "peer") + (("teacher", "peer_teacher") if targets == "ema" else ())
    for key in keys:
        assert all(torch.equal(whole[key][k], resumed[key][k]) for k in whole[key]), key
        assert any(k.startswith("depth_head.") for k in whole[key]) == depth
    if targets == "ema":  # the copies are averages, not the networks
        for net, teacher in (("model", "teacher"), ("peer", "peer_teacher")):
            assert not all(torch.equal(whole[net][k], whole[teacher][k]) for k in whole[net])
    else:
        assert whole["teacher"] is None and whole["peer_teacher"] is None


def test_a_checkpoint_without_the_second_network_is_refused(tiny_config, tmp_path):
    out = tmp_path / "cps"
    cli.main(["--config", tiny_config, *RUN, "train.epochs=1", f"out_dir={out}"])
    state = torch.load(out / "last.pt", weights_only=False)
    state["peer"] = None
    save_atomic(state, str(out / "last.pt"))
    with pytest.raises(SystemExit, match="does not hold this run's training state"):
        cli.main(["--resume", str(out), "train.progress=false"])


def test_a_method_with_three_networks_is_refused(tiny_config, tmp_path):
    class Three(get("cps")):
        name, description = "three_networks", "three networks"
        networks = 3

    register(Three)
    with pytest.raises(ValueError, match="Method.networks expected 1 or 2, got 3"):
        Trainer(load_config(tiny_config, ["method=three_networks", f"out_dir={tmp_path}"]))
