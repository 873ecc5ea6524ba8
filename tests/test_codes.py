"""The reduction and normalizer codes are defined once (semiseg_fast.base.codes); the C++ kernels
mirror them in csrc/common/codes.h, which must agree name for name and value for value."""

import os
import re

from semiseg_fast.base import Normalizer, Reduction

HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "common", "codes.h")


def _cpp_enum(name):
    with open(HEADER) as f:
        body = re.search(r"enum " + name + r" \{([^}]*)\}", f.read()).group(1)
    return {k: int(v) for k, v in re.findall(r"k(\w+) = (\d+)", body)}


def _as_cpp(enum):
    return {m.name.title(): m.value for m in enum}


def test_cpp_codes_mirror_the_python_ones():
    assert _cpp_enum("Reduction") == _as_cpp(Reduction)
    assert _cpp_enum("Normalizer") == _as_cpp(Normalizer)


def test_the_ops_pass_these_codes():
    from semiseg_fast import _checks

    assert _checks.reduction("mean") == Reduction.MEAN and _checks.normalizer("weighted", ["weighted"])[0] == 1
    assert _checks.normalizer(2.0, [])[0] == Normalizer.VALUE
