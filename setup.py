"""Builds the CPU extension semiseg_fast._C from csrc/ (torch.utils.cpp_extension).

Install without build isolation so that the torch already in the environment is used:
    pip install --no-build-isolation -e .
"""

import glob
import os

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as e:  # pragma: no cover - explained to the user
    raise SystemExit(
        "semiseg_fast builds against an installed torch. Install torch first "
        "(CPU: pip install torch==2.13.0), then: pip install --no-build-isolation -e ."
    ) from e

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
headers = sorted(glob.glob(os.path.join("csrc", "*", "*.h")))  # an edited header rebuilds the extension
cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-Wall", "-Wno-psabi", "-fno-math-errno"]
if os.environ.get("SEMISEG_FAST_DEBUG"):
    cxx_flags = ["-O0", "-g", "-std=c++17", "-fopenmp", "-Wall", "-Wno-psabi"]

setup(
    ext_modules=[
        CppExtension(
            name="semiseg_fast._C",
            sources=sources,
            include_dirs=[os.path.join(here, "csrc")],
            depends=headers,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
)
