"""Declares the C++ superpoint extension sas_ray._segmentator; all other packaging lives in pyproject.toml."""
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

# -ffp-contract=off: no fused multiply-adds, so results match the float32 reference bit for bit on every CPU.
FLAGS = ["/O2", "/fp:precise"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]

setup(
    ext_modules=[
        Pybind11Extension(
            "sas_ray._segmentator",
            ["csrc/segmentator.cpp", "csrc/bindings.cpp"],
            depends=["csrc/segmentator.hpp"],
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=FLAGS,
        )
    ],
    cmdclass={"build_ext": build_ext},
)
