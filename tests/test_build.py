"""The C++ kernels are built per CPU: a build made for one CPU (-march=native) is never loaded on another."""
import shutil

import torch.utils.cpp_extension

import lth.engine.build as build

ZEN4 = frozenset("avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni".split())
SKYLAKE = frozenset("avx2 fma avx512f avx512bw avx512vl".split())


def test_the_build_name_is_keyed_by_the_cpu_features_and_the_architecture():
    assert build.build_name(ZEN4, "x86_64") == build.build_name(frozenset(sorted(ZEN4)), "x86_64")
    names = {build.build_name(ZEN4, "x86_64"), build.build_name(SKYLAKE, "x86_64"),
             build.build_name(frozenset("avx2 fma".split()), "x86_64"), build.build_name(ZEN4, "aarch64")}
    assert len(names) == 4 and all(n.startswith("lth_kernels_") for n in names)


def test_a_changed_source_gets_a_new_name(tmp_path, monkeypatch):
    before = build.build_name(ZEN4, "x86_64")
    shutil.copytree(build.CSRC, tmp_path / "csrc")
    monkeypatch.setattr(build, "CSRC", tmp_path / "csrc")
    assert build.build_name(ZEN4, "x86_64") == before, "the name depends on the content, not on the folder"
    (tmp_path / "csrc" / "attention.cpp").write_text((tmp_path / "csrc" / "attention.cpp").read_text() + "\n// x\n")
    assert build.build_name(ZEN4, "x86_64") != before


def test_another_cpu_builds_its_own_extension_and_a_failed_build_falls_back(monkeypatch):
    """On a machine whose CPU differs (a shared home directory), lth asks torch for a build of another name, so
    torch compiles anew instead of loading this CPU's; when that build fails, lth says why and runs without it."""
    asked = []

    def no_compiler(name, sources, **kw):
        asked.append((name, sources, kw["extra_cflags"]))
        raise RuntimeError("Ninja is required to load C++ extensions")

    here, real = build.build_name(*build.this_cpu()), build.cpu_flags()
    other = SKYLAKE if real != SKYLAKE else ZEN4
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(build, "cpu_flags", lambda: other)
    build.native.cache_clear()
    try:
        module, why = build.native()
        assert module is None and "Ninja is required" in why
        (name, sources, flags), = asked
        assert name != here and name == build.build_name(*build.this_cpu())
        assert "-march=native" in flags and [s.rsplit("/", 1)[1] for s in sources] == list(build.SOURCES)
    finally:
        build.native.cache_clear()  # the next caller builds (or finds) this CPU's own extension again


def test_without_readable_cpu_flags_the_host_keys_the_build(monkeypatch):
    monkeypatch.setattr(build, "cpu_flags", lambda: frozenset())
    flags, machine = build.this_cpu()
    assert flags == frozenset() and build.platform.node() in machine
