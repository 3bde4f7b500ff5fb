"""The program's entry point leaves numpy's slow AVX-512 sorts out on AMD Zen 4 only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tier_ml.launch import NUMPY_CPU_FEATURES, _cpuinfo, avx512_features, is_zen4, prefer_avx2_sorts


def cpuinfo(vendor: str, family: int, flags: str) -> str:
    processor = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 17\nflags\t\t: {flags}\n"
    other = processor.replace("processor\t: 0", "processor\t: 1")
    return f"{processor}\n{other}\n"


ZEN4 = cpuinfo("AuthenticAMD", 25, "fpu sse2 avx avx2 avx512f avx512dq avx512bw")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ZEN4, True),
        (cpuinfo("AuthenticAMD", 25, "fpu sse2 avx avx2"), False),  # Zen 3: no AVX-512
        (cpuinfo("AuthenticAMD", 26, "fpu avx2 avx512f"), False),  # Zen 5 compresses at full speed
        (cpuinfo("GenuineIntel", 6, "fpu avx2 avx512f"), False),  # Intel: AVX-512 sorts are fastest
        (cpuinfo("AuthenticAMD", 25, "fpu avx2 avx512fx"), False),  # a flag is a whole word
        ("", False),
    ],
)
def test_zen4_is_recognised_from_cpuinfo(text: str, expected: bool) -> None:
    assert is_zen4(text) is expected


def test_feature_names_follow_numpy_version() -> None:
    assert avx512_features("2.4.6") == "X86_V4 AVX512_ICL AVX512_SPR"
    assert avx512_features("3.0.0rc1") == "X86_V4 AVX512_ICL AVX512_SPR"
    assert "AVX512_SKX" in avx512_features("2.3.5").split()
    assert "X86_V4" not in avx512_features("1.26.4").split()


def test_only_zen4_without_a_choice_of_the_users_own_is_changed() -> None:
    asked: list[str] = []

    def numpy_version() -> str:
        asked.append("asked")
        return "2.4.6"

    environ: dict[str, str] = {}
    assert prefer_avx2_sorts(environ, ZEN4, numpy_version)
    assert environ == {NUMPY_CPU_FEATURES: "X86_V4 AVX512_ICL AVX512_SPR"}
    chosen = {NUMPY_CPU_FEATURES: ""}  # the user's choice, even empty, is kept
    assert not prefer_avx2_sorts(chosen, ZEN4, numpy_version)
    assert chosen == {NUMPY_CPU_FEATURES: ""}
    other: dict[str, str] = {}
    asked.clear()
    assert not prefer_avx2_sorts(other, cpuinfo("GenuineIntel", 6, "avx512f"), numpy_version)
    assert other == {} and asked == []  # and the version lookup is skipped


def test_the_program_starts_numpy_without_avx512_exactly_on_zen4() -> None:
    script = (
        "import os, sys\n"
        "from tier_ml.launch import main\n"
        "sys.argv = ['tier-ml', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "from numpy._core._multiarray_umath import __cpu_features__ as features\n"
        f"print('RESULT', os.environ.get({NUMPY_CPU_FEATURES!r}), features.get('AVX512_ICL'))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != NUMPY_CPU_FEATURES}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=120)
    assert done.returncode == 0, done.stderr
    result = done.stdout.strip().splitlines()[-1]
    if is_zen4(_cpuinfo()):  # as on the benchmark machine
        assert result == "RESULT X86_V4 AVX512_ICL AVX512_SPR False"
    else:
        assert result.startswith("RESULT None ")
