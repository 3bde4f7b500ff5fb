"""The ``tier-ml`` program's entry point: process settings that must come before any import.

On AMD Zen 4 processors numpy's AVX-512 sorts are several times slower than its AVX2
ones: they store with the memory form of ``vpcompress``, which Zen 4 runs in microcode
(numpy/x86-simd-sort#6; AMD's Zen 4 optimization guide, 2.11.2). ``tier-ml classify``
sorts tens of millions of id hashes, and on this project's 2-core Zen 4 benchmark
machine ten million 32-bit hashes sort in 0.40 s with AVX-512 and 0.06 s with AVX2.
numpy reads the CPU features to leave out from ``NPY_DISABLE_CPU_FEATURES`` once, when
it is first imported, so the program sets it here, before anything imports numpy. It
does so only on Zen 4, and only when the variable is not already set: set it yourself
(even to an empty value) to choose otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, MutableMapping
from pathlib import Path

NUMPY_CPU_FEATURES = "NPY_DISABLE_CPU_FEATURES"


def is_zen4(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo`` text describes an AMD Zen 4 core with AVX-512.

    Zen 3 and Zen 4 are both family 25; only Zen 4 has AVX-512. Zen 5 (family 26)
    stores compressed vectors at full speed.
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor is enough: a machine has one kind
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return (
        fields.get("vendor_id") == "AuthenticAMD"
        and fields.get("cpu family") == "25"
        and "avx512f" in fields.get("flags", "").split()
    )


def avx512_features(numpy_version: str) -> str:
    """The names numpy ``numpy_version`` gives its AVX-512 code paths (they changed in 2.4)."""
    found = re.match(r"(\d+)\.(\d+)", numpy_version)
    if found is None or (int(found[1]), int(found[2])) >= (2, 4):
        return "X86_V4 AVX512_ICL AVX512_SPR"
    return "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"


def prefer_avx2_sorts(
    environ: MutableMapping[str, str], cpuinfo: str, numpy_version: Callable[[], str]
) -> bool:
    """Leave numpy's AVX-512 paths out on Zen 4 unless ``environ`` already decides; True if set."""
    if NUMPY_CPU_FEATURES in environ or not is_zen4(cpuinfo):
        return False
    environ[NUMPY_CPU_FEATURES] = avx512_features(numpy_version())
    return True


def _cpuinfo() -> str:
    """The start of ``/proc/cpuinfo``: the first processor's block (``is_zen4`` reads no more),
    not the whole file, which on a large machine repeats it for every core."""
    try:
        with Path("/proc/cpuinfo").open(errors="replace") as handle:
            return handle.read(16_384)
    except OSError:  # not Linux, or not readable: leave numpy as it is
        return ""


def _numpy_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # 25 ms: only when needed

    try:
        return version("numpy")
    except (PackageNotFoundError, ValueError):
        return "0"


def main() -> None:
    """Run the ``tier-ml`` command line (``tier_ml.cli.app``)."""
    prefer_avx2_sorts(os.environ, _cpuinfo(), _numpy_version)
    from tier_ml.cli import app  # after the environment is set: it imports numpy

    app()
