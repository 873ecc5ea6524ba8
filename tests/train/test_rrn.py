"""method=rrn: region discriminators, local selection loss, dynamic region-loss correction, and the
loop's training of a method's own modules (their optimizer, checkpoints, processes)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import semiseg_fast as sf
from semiseg_fast.models import DeepLabV3Plus, model_outputs
from semiseg_fast.train import cli
from semiseg_fast.train.checkpoint import save_atomic
from semiseg_fast.train.config import load_config
from semiseg_fast.train.distributed import average_gradients
from semiseg_fast.train.methods import get
from semiseg_fast.train.methods.base import StepContext, mix
from semiseg_fast.train.methods.rrn import RegionDiscriminator, cell_grid, cells_to_pixels, discriminator_input

from .helpers import run_module, train_killed_after

RUN = ["method=rrn", "deterministic=true", "train.progress=false", "train.amp=off"]
BOXES = ["mask=box", "strong_color=false", "targets=networks"]  # the step tests' CPS: its code's boxes and labels

N, S, C = 2, 32, 4


def _cps_step(ctx, labeled, unlabeled):
    """CPS's unsupervised term on the same batch, with the same masks."""
    config = load_config(None, ["method=cps", *(f"semi.cps.{o}" for o in BOXES)])
    return get("cps")(config, C).step(ctx, labeled, unlabeled).unsupervised


def _step_inputs(overrides, epoch=1):
    """A method, its discriminators in eval mode (their scores depend on the input alone), two
    networks in eval mode, a batch and a context."""
    config = load_config(None, ["method=rrn", "semi.rrn.cell=16", *(f"semi.rrn.{o}" for o in BOXES), *overrides])
    method = get("rrn")(config, C)
    discriminators = method.state().eval()
    g = torch.Generator().manual_seed(0)
    labeled = [torch.randn(N, 3, S, S, generator=g), torch.randint(0, C, (N, S, S), generator=g)]
    pad = torch.zeros(N, S, S, dtype=torch.bool)
    pad[:, -3:] = True
    unlabeled = [torch.randn(N, 3, S, S, generator=g), pad, sf.mixing.cps_box_masks(N, S, S, g)]
    torch.manual_seed(1)
    nets = [DeepLabV3Plus(C, width=8, rep_dim=None).eval() for _ in range(2)]
    ctx = StepContext(nets[0], None, config["semi"], 255, epoch, torch.Generator(), C, peer=nets[1])
    return config, method, discriminators, ctx, labeled, unlabeled


def _verdict(discriminator, accept):
    """Makes ``discriminator`` score every region 0.99995 (accept) or 0.00005 (reject)."""
    with torch.no_grad():
        discriminator.score.weight.zero_()
        discriminator.score.bias.fill_(10.0 if accept else -10.0)


def test_cell_grid_and_cells_to_pixels():
    assert cell_grid(56, 56, 0) == (1, 1) and cell_grid(56, 56, 28) == (2, 2) and cell_grid(50, 40, 16) == (4, 3)
    values = torch.arange(12.0).view(1, 4, 3)
    pixels = cells_to_pixels(values, 50, 40, 16)
    assert pixels.shape == (1, 50, 40)
    for y in (0, 15, 16, 47, 48, 49):
        for x in (0, 15, 16, 31, 32, 39):
            assert pixels[0, y, x] == values[0, y // 16, x // 16], (y, x)
    assert torch.equal(cells_to_pixels(torch.tensor([[[2.0]]]), 5, 7, 0), torch.full((1, 5, 7), 2.0))


def test_one_cell_is_the_global_pooling_of_s4gan():
    d = RegionDiscriminator(7, 4).eval()
    x = torch.randn(2, 7, 64, 48)
    score, cells = d(x, (1, 1))
    features = d.features(x)
    assert features.shape == (2, 32, 4, 3)  # stride 16, 8 x width channels
    torch.testing.assert_close(cells[:, 0, 0], features.mean((2, 3)))
    torch.testing.assert_close(score[:, 0, 0], d.score(features.mean((2, 3)))[:, 0])
    score, cells = d(x, (2, 3))
    assert score.shape == (2, 2, 3) and cells.shape == (2, 2, 3, 32)
    torch.testing.assert_close(cells[:, 1, 2], features[:, :, 2:, 2].mean(2))


@pytest.mark.parametrize(
    "correction,accepts,weights",
    [
        (False, (True, False), (1.0, 0.0)),  # each network's own discriminator only
        (True, (True, False), (0.5, 0.5)),  # one discriminator accepts: disagree_weight for both
        (True, (True, True), (1.0, 1.0)),  # both accept: agree_weight
        (True, (False, False), (0.0, 0.0)),  # nothing selected: no selection loss
    ],
)
def test_selection_loss_weights_each_networks_own_argmax_by_the_verdicts(correction, accepts, weights):
    config, method, discriminators, ctx, labeled, unlabeled = _step_inputs([f"semi.rrn.correction={correction}"])
    for d, accept in zip(discriminators, accepts):
        _verdict(d, accept)
    out = method.step(ctx, labeled, unlabeled)

    cps = _cps_step(ctx, labeled, unlabeled)
    images_u, pad, box = unlabeled
    valid = ~mix(box, pad)
    images_l, labels_l = labeled
    real = discriminator_input(F.one_hot(labels_l, C).permute(0, 3, 1, 2), images_l)
    expected, selected, fm = cps, 0, 0.0
    for net, d, w in zip((ctx.student, ctx.peer), discriminators, weights):
        with torch.no_grad():
            logits = model_outputs(net(mix(box, images_u)))[0]
            logits = F.interpolate(logits, size=(S, S), mode="bilinear", align_corners=True)
            fake = discriminator_input(logits.softmax(1) * valid[:, None], mix(box, images_u))
            fm = fm + (d.features(real).mean((0, 2, 3)) - d.features(fake).mean((0, 2, 3))).abs().mean()
        ce = F.cross_entropy(logits, logits.argmax(1), reduction="none")
        if w > 0:
            expected, selected = expected + w * ce[valid].mean(), selected + int(valid.sum())
    torch.testing.assert_close(out.unsupervised, expected, rtol=1e-4, atol=1e-6)
    # the map at 32 pixels is 2x2, one position per 16-pixel cell: cell means average like the whole map
    fm_term = (out.loss - out.supervised - out.unsupervised).detach()
    torch.testing.assert_close(fm_term, 0.1 * fm, rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(out.mask_ratio, torch.tensor(selected / (2 * int(valid.sum()))))


def test_no_selection_before_its_epoch():
    config, method, discriminators, ctx, labeled, unlabeled = _step_inputs([], epoch=0)
    for d in discriminators:
        _verdict(d, True)
    out = method.step(ctx, labeled, unlabeled)
    cps = _cps_step(ctx, labeled, unlabeled)
    torch.testing.assert_close(out.unsupervised, cps)
    assert float(out.mask_ratio) == 0.0


@pytest.mark.parametrize(
    "correction,accepts,epoch,kept",
    [(False, (False, True), 1, False), (True, (False, True), 1, True), (True, (True, True), 0, False)],
)
def test_pseudo_labels_are_kept_where_the_selection_would_train(correction, accepts, epoch, kept):
    """Network 1's argmax; kept in the regions its own discriminator (or, with correction, either)
    accepts, from the selection's epoch on."""
    config, method, discriminators, ctx, labeled, unlabeled = _step_inputs([f"semi.rrn.correction={correction}"])
    for d, accept in zip(discriminators, accepts):
        _verdict(d, accept)
    images = unlabeled[0]
    labels, keep = method.pseudo_labels(ctx.student, images, [0, 1], epoch)
    logits = F.interpolate(model_outputs(ctx.student(images))[0], size=(S, S), mode="bilinear", align_corners=True)
    assert torch.equal(labels.long(), logits.argmax(1))
    assert keep.shape == (N, S, S) and bool(keep.all()) == kept and bool(keep.any()) == kept
    assert discriminators.training is False  # left as it was


def test_cps_pseudo_labels_keep_the_confident_pixels():
    torch.manual_seed(0)
    net, images = DeepLabV3Plus(C, width=8, rep_dim=None).eval(), torch.randn(2, 3, S, S)
    logits = F.interpolate(model_outputs(net(images))[0], size=(S, S), mode="bilinear", align_corners=True)
    conf, argmax = logits.detach().softmax(1).max(1)
    threshold = float(conf.median())
    method = get("cps")(load_config(None, ["method=cps", f"semi.cps.threshold={threshold}"]), C)
    labels, keep = method.pseudo_labels(net, images, [0, 1], 0)
    assert torch.equal(labels.long(), argmax) and 0 < keep.float().mean() < 1
    assert torch.equal(keep, conf >= threshold)


def test_each_loss_trains_only_its_side():
    """The networks' loss (with feature matching through the discriminators) leaves the
    discriminators' parameters alone; the discriminators' loss leaves the networks' alone."""
    config, method, discriminators, ctx, labeled, unlabeled = _step_inputs([])
    discriminators.train()
    out = method.step(ctx, labeled, unlabeled)
    d_params = list(discriminators.parameters())
    net_params = [*ctx.student.parameters(), *ctx.peer.parameters()]
    assert all(g is None for g in torch.autograd.grad(out.loss, d_params, retain_graph=True, allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(out.state_loss, net_params, retain_graph=True, allow_unused=True))
    assert all(g is not None for g in torch.autograd.grad(out.state_loss, d_params, retain_graph=True))
    assert all(g is not None for g in torch.autograd.grad(out.loss, net_params, allow_unused=True)[-2:])


@pytest.mark.parametrize(
    "override,key", [("semi.rrn.cell=8", "semi.rrn.cell"), ("semi.rrn.selection_threshold=1", "selection_threshold")]
)
def test_bad_settings_are_refused_by_name(override, key):
    with pytest.raises(ValueError, match=key):
        load_config(None, ["method=rrn", override])


def test_trains_and_checkpoints_both_discriminators_and_their_optimizer(tiny_config, tmp_path):
    out = tmp_path / "rrn"
    cli.main(["--config", tiny_config, *RUN, f"out_dir={out}"])
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 18 and state["peer"] is not None
    assert {k.split(".")[0] for k in state["criterion"]} == {"0", "1"}  # the two discriminators
    adam = state["state_optimizer"]["state"]
    assert len(adam) == len(state["criterion"]) and all(int(s["step"]) == 18 for s in adam.values())


@pytest.mark.parametrize("depth", [False, True])
def test_a_killed_run_resumes_networks_discriminators_and_optimizers_exactly(
    tiny_config, tmp_path, monkeypatch, depth_run, depth
):
    """With a depth run, its defaults too: depth masks, labeled crops in the mixes, depth heads."""
    run = [*RUN, f"semi.rrn.depth_run={depth_run}"] if depth else RUN
    cli.main(["--config", tiny_config, *run, f"out_dir={tmp_path / 'whole'}"])
    # dies after step 13 (in the selection's epoch); its last checkpoint is step 12's
    train_killed_after(13, ["--config", tiny_config, *run, f"out_dir={tmp_path / 'killed'}"], monkeypatch)
    cli.main(["--resume", str(tmp_path / "killed"), "train.progress=false"])
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    assert whole["teacher"] is not None and whole["peer_teacher"] is not None  # semi.rrn.targets=ema
    for key in ("model", "peer", "teacher", "peer_teacher", "criterion"):
        assert all(torch.equal(whole[key][k], resumed[key][k]) for k in whole[key]), key
    assert any(k.startswith("depth_head.") for k in whole["peer"]) == depth
    for i, s in whole["state_optimizer"]["state"].items():
        assert all(torch.equal(v, resumed["state_optimizer"]["state"][i][k]) for k, v in s.items())


@pytest.mark.parametrize("key", ["criterion", "state_optimizer"])
def test_a_checkpoint_without_the_discriminators_or_their_optimizer_is_refused(tiny_config, tmp_path, key):
    out = tmp_path / "rrn"
    cli.main(["--config", tiny_config, *RUN, "train.epochs=1", f"out_dir={out}"])
    state = torch.load(out / "last.pt", weights_only=False)
    state[key] = None
    save_atomic(state, str(out / "last.pt"))
    with pytest.raises(SystemExit, match="does not hold this run's training state"):
        cli.main(["--resume", str(out), "train.progress=false"])


@pytest.mark.parametrize("depth", [False, True])
def test_torchrun_two_processes(tiny_config, tmp_path, depth_run, depth):
    """With a depth run, its defaults too: its masks, the labeled crops in the mixes and both
    networks' depth heads."""
    out = tmp_path / "ddp"
    result = run_module(
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "semiseg_fast.train",
        "--config",
        tiny_config,
        f"out_dir={out}",
        "method=rrn",
        *([f"semi.rrn.depth_run={depth_run}"] if depth else []),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 10 and state["state_optimizer"]["state"]
    assert any(k.startswith("depth_head.") for k in state["peer"]) == depth


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _average_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    a, b = torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)
    a.grad = torch.full((2, 3), float(rank + 1))
    if rank == 0:
        b.grad = torch.arange(4.0)  # rank 1 has no gradient for b: it counts as zero
    average_gradients([a, b])
    torch.save({"a": a.grad, "b": b.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_average_gradients_over_two_processes(tmp_path):
    mp.spawn(_average_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(grads["a"], torch.full((2, 3), 1.5))
        torch.testing.assert_close(grads["b"], torch.arange(4.0) / 2)
