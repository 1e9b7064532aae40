"""Builds orloj-rt's compiled scheduling engine from csrc/ into orloj_rt.engine._native.

Only gcc (g++) and the Python headers are needed. Generated C++ stays out of git.

Options:
  ORLOJ_RT_ANNOTATE=1   also write Cython's HTML annotation next to each .pyx
                        (or: python setup.py build_ext --inplace --cython-annotate)
  ORLOJ_RT_DEBUG=1      build with -O0 -g and Cython's bounds checks, for gdb
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ANNOTATE_FLAG = "--cython-annotate"
annotate = os.environ.get("ORLOJ_RT_ANNOTATE") == "1"
if ANNOTATE_FLAG in sys.argv:
    sys.argv.remove(ANNOTATE_FLAG)
    annotate = True
debug = os.environ.get("ORLOJ_RT_DEBUG") == "1"

# -ffp-contract=off: no fused multiply-add, so that the compiled engine computes bit for bit
# what the pure-Python twin computes (the tests compare the two decision by decision).
compile_args = ["-std=c++17", "-ffp-contract=off", "-fno-fast-math"]
compile_args += ["-O0", "-g"] if debug else ["-O3"]


def extensions():
    from Cython.Build import cythonize

    ext = Extension(
        "orloj_rt.engine._native",
        sources=["csrc/engine/_native.pyx"],
        include_dirs=["csrc/engine"],
        language="c++",
        extra_compile_args=compile_args,
    )
    # the cluster router's relay (orloj_rt/cluster/router.py relays in Python without it)
    relay = Extension("orloj_rt.cluster._relay", sources=["csrc/cluster/_relay.pyx"],
                      extra_compile_args=["-O2"], optional=True)
    return cythonize(
        [ext, relay],
        include_path=["csrc/engine"],
        annotate=annotate,
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )


class BuildExt(build_ext):
    """Turns a missing compiler into a message that names the fix."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - re-raised with advice
            raise SystemExit(
                f"orloj-rt: building the compiled engine failed: {exc}\n"
                "Install g++ and the Python headers (Debian: apt-get install g++ python3-dev), "
                "or use the pure-Python engine with ORLOJ_RT_PURE=1."
            ) from exc


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
