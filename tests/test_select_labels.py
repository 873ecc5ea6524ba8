"""``python -m semiseg_fast.select_labels``: farthest points with a difficulty bonus, split files
that training reads as they are, the same files from the same command, and its refusals."""

import json

import pytest
import torch
import yaml

from semiseg_fast import select_labels
from semiseg_fast.data.scene_splits import read_scene_split, write_scene_split
from semiseg_fast.depth import DepthNet
from semiseg_fast.train import cli
from semiseg_fast.train.config import load_config
from semiseg_fast.train.data import build_datasets

from .train.helpers import TINY

POOL = ["--images", "40", "--image-size", "16", "--student-epochs", "2", "--student-width", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory):
    torch.manual_seed(0)
    net = DepthNet(8)
    folder = tmp_path_factory.mktemp("depth")
    torch.save({"encoder": net.encoder.state_dict(), "depth": net.state_dict()}, folder / "depth.pt")
    return str(folder)


def test_farthest_points_take_the_farthest_candidate_raised_by_its_bonus():
    x = torch.tensor([0.0, 4.0, 5.0, 6.0, 10.0], dtype=torch.float64)[:, None]
    distance = torch.cdist(x, x)
    assert select_labels.farthest_points(distance, [0], 3) == [0, 4, 2]  # 5 is the farthest from both 0 and 10
    bonus = torch.tensor([0.0, 0.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    assert select_labels.farthest_points(distance, [0], 3, bonus) == [0, 4, 3]  # 6's difficulty outweighs 5's distance


def test_berhu_is_l1_below_the_threshold_and_quadratic_above():
    error = torch.tensor([0.1, -0.2, 1.0])  # threshold 0.2
    expected = torch.tensor([0.1, 0.2, (1.0 + 0.04) / 0.4]).mean()
    torch.testing.assert_close(select_labels.berhu(error), expected)


def run(tmp_path, name, *args):
    out = tmp_path / name
    assert select_labels.main(["--out", str(out), *POOL, *args]) == 0
    return out


@pytest.mark.parametrize("strategy", ["diversity+difficulty", "diversity", "random"])
def test_the_split_covers_the_pool_and_the_same_command_writes_the_same_files(tmp_path, depth_run, strategy):
    args = ["--count", "7", "--rounds", "3", "5", "--strategy", strategy, "--depth", depth_run]
    first, again = run(tmp_path, "a", *args), run(tmp_path, "b", *args)
    for name in ("labeled.txt", "unlabeled.txt", "selection.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    labeled, unlabeled = (read_scene_split(str(first / f), 40) for f in ("labeled.txt", "unlabeled.txt"))
    assert len(labeled) == 7 and sorted(labeled + unlabeled) == list(range(40))
    record = json.loads((first / "selection.json").read_text())
    assert len(record["order"]) == 7 and record["strategy"] == strategy
    assert record["rounds"] == [3, 5]
    assert len(record.get("difficulty", [])) == (2 if strategy == "diversity+difficulty" else 0)
    other = run(tmp_path, "c", *args, "--seed", "1")
    assert (other / "labeled.txt").read_bytes() != (first / "labeled.txt").read_bytes()


def test_difficulty_changes_what_diversity_alone_would_choose(tmp_path, depth_run):
    picks = {}
    for strategy in ("diversity", "diversity+difficulty"):
        out = run(tmp_path, strategy, "--count", "12", "--rounds", "4", "--strategy", strategy, "--depth", depth_run,
                  "--difficulty-weight", "5")  # fmt: skip
        picks[strategy] = json.loads((out / "selection.json").read_text())["order"]
    assert picks["diversity"][:4] == picks["diversity+difficulty"][:4]  # the first round: distances alone
    assert picks["diversity"] != picks["diversity+difficulty"]


def test_training_reads_the_written_split_as_it_is(tmp_path, depth_run):
    out = run(tmp_path, "split", "--count", "5", "--strategy", "random")
    config = load_config(None, [f"data.root={out}", "data.synthetic_train=40", "data.image_size=16"])
    data = build_datasets(config["data"])
    assert data.labeled.indices == read_scene_split(str(out / "labeled.txt"), 40)
    assert len(data.unlabeled) == 35


def test_entropy_takes_the_images_a_checkpoint_is_least_sure_of(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cli.main(["--config", str(tmp_path / "tiny.yaml"), "method=supervised", "train.epochs=1", "train.progress=false",
              f"out_dir={tmp_path / 'seg'}"])  # fmt: skip
    checkpoint = str(tmp_path / "seg" / "last.pt")
    out = run(tmp_path, "entropy", "--count", "6", "--strategy", "entropy", "--checkpoint", checkpoint)
    scores = select_labels.entropy_scores(checkpoint, select_labels.pool_images(select_labels.parse_args(
        ["--out", "x", "--count", "6", *POOL])), 16)  # fmt: skip
    chosen = read_scene_split(str(out / "labeled.txt"), 40)
    assert sorted(chosen) == sorted(scores.argsort(descending=True)[:6].tolist())
    assert scores[chosen].min() >= torch.median(scores)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--count", "40"], "--count: expected 1 to 39 (the pool has 40 images"),
        (["--count", "0"], "--count: expected 1 to 39"),
        (["--count", "5", "--rounds", "4", "2"], "--rounds: expected increasing positive counts"),
        (["--count", "5"], "--depth: the diversity\\+difficulty strategy needs a depth run's folder"),
        (["--count", "5", "--strategy", "entropy"], "--checkpoint: the entropy strategy needs"),
        (["--count", "5", "--depth", "nowhere"], "--depth: 'nowhere/depth.pt' holds no depth network"),
        (["--count", "5", "--difficulty-weight", "-1", "--strategy", "random"], "--difficulty-weight: expected"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, capsys, args, message):
    assert select_labels.main(["--out", str(tmp_path / "x"), *POOL, *args]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err
    assert not (tmp_path / "x" / "labeled.txt").exists()


def test_bad_split_files_are_refused_with_their_line(tmp_path):
    path = tmp_path / "labeled.txt"
    path.write_text("scene000001\nscene000099\n")
    with pytest.raises(ValueError, match="labeled.txt, line 2: expected an image id scene000000 to scene000039"):
        read_scene_split(str(path), 40)
    path.write_text("scene000001\n\nscene000001\n")
    with pytest.raises(ValueError, match="line 3: scene000001 is listed twice"):
        read_scene_split(str(path), 40)
    write_scene_split(str(path), [1, 2])
    write_scene_split(str(tmp_path / "unlabeled.txt"), [2, 3])
    config = load_config(None, [f"data.root={tmp_path}", "data.synthetic_train=40", "data.image_size=16"])
    with pytest.raises(ValueError, match="1 images are in both, scene000002 first"):
        build_datasets(config["data"])
    with pytest.raises(ValueError, match="data.root expected a folder holding data.labeled_split='labeled.txt'"):
        load_config(None, [f"data.root={tmp_path / 'none'}"])
