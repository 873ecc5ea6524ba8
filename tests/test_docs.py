"""The docs stay true to the code: docs/training.md is what `make docs` writes, every config key
has help, every link into docs/experiments.md (README, docs, code comments) lands on a heading,
and the README stays short."""

import os
import re

from semiseg_fast.tools import config_docs
from semiseg_fast.train import schema
from semiseg_fast.train.config import tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def _slug(heading):
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_training_md_is_current():
    assert _read("docs", "training.md") == config_docs.render(), "docs/training.md is stale: run make docs"


def test_every_config_key_has_help_and_a_valid_default():
    for opt in schema.options(tree()):
        assert opt.help.strip() and opt.accepts.expected, opt.key
        assert opt.accepts.ok(opt.default), opt.key


def test_links_into_experiments_land_on_headings():
    experiments = _read("docs", "experiments.md")
    anchors = {_slug(line.lstrip("#")) for line in experiments.splitlines() if line.startswith("#")}
    code = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(ROOT, "semiseg_fast")) for f in files]
    sources = [_read("README.md"), _read("docs", "training.md"), *(_read(f) for f in code if f.endswith(".py"))]
    linked = {m for text in sources for m in re.findall(r"experiments\.md#([\w-]+)", text)}
    assert linked and linked <= anchors, sorted(linked - anchors)


def test_readme_is_short_and_has_no_history():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 250
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b", readme)  # commit hashes
