import csv
import os

import pytest
import torch

from semiseg_fast.data import SyntheticClips, normalize
from semiseg_fast.data.clips import ClipGeometry
from semiseg_fast.depth import (
    DepthNet,
    PoseNet,
    axis_angle_to_matrix,
    depth_errors,
    depth_loss,
    median_baseline,
    motion,
    run,
    warp,
)
from semiseg_fast.depth.networks import cost_volume
from semiseg_fast.depth.run import main
from semiseg_fast.models import DeepLabV3Plus
from semiseg_fast.models.pretrained import load_pretrained
from semiseg_fast.train import load_config
from semiseg_fast.train.checkpoint import load_checkpoint, save_atomic
from semiseg_fast.train.run_model import build_run_model


def test_axis_angle_to_matrix_is_the_exponential_map():
    axis_angle = torch.tensor([[0.3, -0.2, 0.5], [0.0, 0.0, 1e-9], [1.0, 2.0, -0.5]], dtype=torch.float64)
    for v, R in zip(axis_angle, axis_angle_to_matrix(axis_angle)):
        skew = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=torch.float64)
        assert torch.allclose(R, torch.linalg.matrix_exp(skew), atol=1e-12)


def test_inverted_motion_undoes_the_motion():
    axis_angle, translation = torch.tensor([[0.1, -0.3, 0.2]]), torch.tensor([[0.5, -1.0, 2.0]])
    R, T = motion(axis_angle, translation, invert=False)
    Ri, Ti = motion(axis_angle, translation, invert=True)
    point = torch.tensor([1.0, 2.0, 3.0])
    moved = R[0] @ point + T[0]
    assert torch.allclose(Ri[0] @ moved + Ti[0], point, atol=1e-6)


def test_warp_with_the_true_depth_and_motion_rebuilds_frame_t():
    """The embedded clips' own geometry, through ``warp``: closer to frame t than the neighbour."""
    clips = SyntheticClips(4, (48, 48), seed=0)
    gained = []
    for index in range(4):
        item, geometry = clips[index], ClipGeometry(0, index, (48, 48))
        target = item["frames"][1:2].double()
        for offset, source in ((-1, item["frames"][0:1]), (1, item["frames"][2:3])):
            R, T = (torch.from_numpy(a)[None] for a in geometry.motion(offset))
            K = item["intrinsics"][None].double()
            warped = warp(source.double(), item["depth"][None, None].double(), R, T, K)
            inside = (slice(None), slice(None), slice(4, -4), slice(4, -4))
            gained.append(
                float((source.double() - target)[inside].abs().mean() - (warped - target)[inside].abs().mean())
            )
    assert min(gained) > 0 and sum(gained) / len(gained) > 3, gained  # in grey levels


def test_identity_motion_warps_to_the_source_itself():
    source = torch.rand(2, 3, 8, 10, dtype=torch.float64)
    K = torch.tensor([[8.0, 0, 5], [0, 8, 4], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    R, T = torch.eye(3, dtype=torch.float64).expand(2, 3, 3), torch.zeros(2, 3, dtype=torch.float64)
    assert torch.allclose(warp(source, torch.full((2, 1, 8, 10), 3.0, dtype=torch.float64), R, T, K), source)


def test_median_scaled_scores():
    true = torch.tensor([[[2.0, 4.0], [8.0, 0.0]]])  # 0: no true depth there
    abs_rel, within, count = depth_errors(3.0 * true, true)
    assert count == 3 and abs_rel == pytest.approx(0.0) and within == 3
    abs_rel, within, count = median_baseline(true)  # 4 everywhere: errors 1, 0, 0.5
    assert abs_rel == pytest.approx(1.5) and within == 1 and count == 3


def test_depth_loss_trains_both_networks():
    clips = SyntheticClips(2, (32, 32), seed=0)
    frames = torch.stack([clips[i]["frames"] for i in range(2)])
    K = torch.stack([clips[i]["intrinsics"] for i in range(2)])
    depth_net, pose_net = DepthNet(8), PoseNet(4)
    disparities = depth_net(torch.zeros(2, 3, 32, 32))
    assert [tuple(d.shape) for d in disparities] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8), (2, 1, 4, 4)]
    loss, parts = depth_loss(depth_net, pose_net, frames, K)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and set(parts) == {"photometric", "smoothness", "feature_distance"}
    assert parts["feature_distance"] == 0
    for net in (depth_net, pose_net):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(p.grad.abs().sum() > 0 for p in pose_net.parameters())


def test_the_feature_distance_keeps_the_encoder_near_its_start():
    clips = SyntheticClips(2, (32, 32), seed=0)
    frames = torch.stack([clips[i]["frames"] for i in range(2)])
    K = torch.stack([clips[i]["intrinsics"] for i in range(2)])
    torch.manual_seed(0)
    depth_net, pose_net, start = DepthNet(8), PoseNet(4), DepthNet(8).encoder.eval()
    plain, _ = depth_loss(depth_net, pose_net, frames, K)
    loss, parts = depth_loss(depth_net, pose_net, frames, K, reference=start, feature_distance=0.5)
    image = normalize(frames[:, 1])
    deep, deep_start = depth_net.encoder(image)[2].double(), start(image)[2].double()
    expected = ((deep - deep_start) ** 2).sum(1).sqrt().mean()  # per-position L2 norm over channels
    assert torch.allclose(parts["feature_distance"].double(), expected, rtol=1e-5)
    assert torch.allclose(loss, plain + 0.5 * parts["feature_distance"], rtol=1e-5)
    depth_net.zero_grad()
    (loss - plain).backward()  # the distance's gradient reaches the encoder only, and not the start
    assert depth_net.encoder.layer3[1].body[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in depth_net.heads.parameters())
    assert all(p.grad is None for p in start.parameters())
    with pytest.raises(ValueError, match="reference"):
        depth_loss(depth_net, pose_net, frames, K, feature_distance=0.5)


def test_the_pose_network_starts_from_the_pretrained_stem_and_first_stage():
    depth_net, pose_net = DepthNet(8), PoseNet(8)
    depth_net.encoder.stem[0][0].weight.data.normal_()
    pose_net.start_from(depth_net.encoder)
    depth_net.eval(), pose_net.eval()
    x = torch.randn(2, 3, 24, 24)
    assert torch.equal(depth_net.encoder(x)[0], pose_net.layer1(pose_net.stem(x)))
    axis_angle, translation = pose_net(torch.cat([x, x], 1))
    assert axis_angle.shape == translation.shape == (2, 3)


def test_the_cost_volume_finds_the_shift_between_two_feature_maps():
    a = torch.nn.functional.normalize(torch.randn(2, 16, 9, 11), dim=1)
    b = torch.zeros_like(a)
    b[..., 1:, :-2] = a[..., :-1, 2:]  # b at (y + 1, x - 2) is a at (y, x)
    cost = cost_volume(a, b, reach=3)
    assert cost.shape == (2, 49, 9, 11)
    expected = (3 + 1) * 7 + (3 - 2)  # the channel of shift (+1, -2), row-major
    inside = cost[..., :-1, 2:]  # cells whose partner lies within b
    assert torch.allclose(inside[:, expected], torch.ones(()), atol=1e-6)
    assert (inside.argmax(1) == expected).all()
    assert torch.equal(cost_volume(a, a, 1)[:, 4], (a * a).sum(1))  # no shift: the centre channel


def test_the_depth_network_holds_the_segmentation_encoder_and_decoder():
    depth_net = DepthNet()
    load_pretrained(depth_net, "embedded", "small")
    own = DeepLabV3Plus(6).state_dict()
    shared = {
        k: v for k, v in depth_net.state_dict().items() if k.startswith(("encoder.", "aspp.", "reduce.", "fuse."))
    }
    assert set(shared) == {k for k in own if k.startswith(("encoder.", "aspp.", "reduce.", "fuse."))}
    assert all(own[k].shape == v.shape for k, v in shared.items())


TINY = ["--images", "8", "--val-images", "2", "--image-size", "16", "--batch-size", "4", "--width", "8",
        "--pretrained", "none", "--threads", "1"]  # fmt: skip


def stop_after_the_first_checkpoint(monkeypatch, argv: list[str]) -> None:
    """Runs the command as if killed right after its first epoch's checkpoint."""
    real_save = run.save_atomic

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "save_atomic", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.undo()


def test_command_trains_scores_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    assert main(TINY + ["--out", whole, "--epochs", "2"]) == 0

    stop_after_the_first_checkpoint(monkeypatch, TINY + ["--out", split, "--epochs", "2"])
    capsys.readouterr()
    assert main(TINY + ["--out", split, "--epochs", "2", "--lr", "2e-4", "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(TINY + ["--out", split, "--epochs", "2", "--resume"]) == 0
    older = load_checkpoint(os.path.join(split, "last.pt"))  # networks of another design are named, not a crash
    older["model"]["pose"] = {"body.0.weight": torch.zeros(1)}
    save_atomic(older, os.path.join(split, "last.pt"))
    assert main(TINY + ["--out", split, "--epochs", "2", "--resume"]) == 2
    assert "cannot load" in capsys.readouterr().err
    a, b = torch.load(os.path.join(whole, "depth.pt")), torch.load(os.path.join(split, "depth.pt"))
    assert set(a) == {"encoder", "depth", "pose"}
    for key in a:
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    with open(os.path.join(whole, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert 0 < float(rows[-1]["abs_rel"]) and 0 <= float(rows[-1]["delta1"]) <= 1
    assert os.path.getsize(os.path.join(whole, "depth.png")) > 1000
    assert os.path.isfile(os.path.join(whole, "previous.pt"))


def test_command_trains_the_decoder_first_then_the_encoder_near_its_start(tmp_path, monkeypatch):
    """Hoyer et al.'s two phases in one run: --frozen-epochs leave the encoder's weights and
    statistics as they started, then it trains at --encoder-lr with the feature distance; a run
    stopped in between resumes to the same weights."""
    weights = str(tmp_path / "start.pt")
    torch.manual_seed(1)
    start = DepthNet(8).encoder
    torch.save(start.state_dict(), weights)
    hoyer = TINY[:-4] + ["--pretrained", weights, "--threads", "1", "--epochs", "2", "--frozen-epochs", "1",
                         "--encoder-lr", "1e-5", "--feature-distance", "1e-2"]  # fmt: skip
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    assert main(hoyer + ["--out", whole]) == 0

    stop_after_the_first_checkpoint(monkeypatch, hoyer + ["--out", split])
    first = load_checkpoint(os.path.join(split, "last.pt"))["model"]["depth"]
    for name, value in start.state_dict().items():  # weights and batch-norm statistics alike
        assert torch.equal(first["encoder." + name], value), name
    torch.manual_seed(0)  # the command's --seed: its depth network's first decoder
    assert not torch.equal(first["aspp.project.0.weight"], DepthNet(8).state_dict()["aspp.project.0.weight"])
    assert main(hoyer + ["--out", split, "--resume"]) == 0
    a, b = torch.load(os.path.join(whole, "depth.pt")), torch.load(os.path.join(split, "depth.pt"))
    for name in a["depth"]:
        assert torch.equal(a["depth"][name], b["depth"][name]), name
    assert not torch.equal(a["encoder"]["layer3.1.body.1.weight"], start.state_dict()["layer3.1.body.1.weight"])
    with open(os.path.join(whole, "metrics.csv")) as f:
        distances = [float(r["feature_distance"]) for r in csv.DictReader(f)]
    assert distances[0] == 0 and distances[1] > 0  # frozen, the encoder is its start


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs"),
        (["--encoder-lr", "0"], "--encoder-lr"),
        (["--frozen-epochs", "61"], "--frozen-epochs"),
        (["--frozen-epochs", "-1"], "--frozen-epochs"),
        (["--feature-distance", "-1"], "--feature-distance"),
        (["--feature-distance", "0.01"], "--pretrained other than none"),
        (["--lr", "nan"], "--lr"),
        (["--pose-lr", "0"], "--pose-lr"),
        (["--ssim-weight", "2"], "--ssim-weight"),
        (["--image-size", "8"], "--image-size"),
        (["--pretrained", "missing.pt"], "--pretrained"),
        (["--data", "cityscapes"], "--root"),
        (["--batch-size", "9"], "--batch-size"),
        (["--pretrained", "embedded"], "--width 32"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_command_refuses_bad_arguments(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", str(tmp_path)] + args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_resume_without_a_run_names_the_file(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path), "--resume"]) == 2
    assert "last.pt" in capsys.readouterr().err


def test_segmentation_starts_from_a_depth_run(tmp_path):
    """The encoder and the decoder modules DeepLabv3+ shares with the depth network, all of them."""
    depth_net = DepthNet()
    with torch.no_grad():
        for p in depth_net.parameters():
            p.normal_()
    torch.save({"encoder": depth_net.encoder.state_dict(), "depth": depth_net.state_dict()}, tmp_path / "depth.pt")
    config = load_config(None, [f"model.pretrained=depth:{tmp_path}", f"out_dir={tmp_path / 'run'}"])
    model = build_run_model(config, 6, load_weights=True)
    shared = [k for k in model.state_dict() if k.startswith(("encoder.", "aspp.", "reduce.", "fuse."))]
    assert len(shared) > 100
    for name in shared:
        assert torch.equal(model.state_dict()[name], depth_net.state_dict()[name]), name
    assert not torch.equal(model.classifier.weight[:1], depth_net.heads[2][1].weight)  # the heads differ
    with pytest.raises(ValueError, match="model.pretrained.*depth.pt"):
        load_config(None, [f"model.pretrained=depth:{tmp_path / 'nowhere'}"])
