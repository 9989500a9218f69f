"""cv_jax.runtime.host_malloc: which glibc malloc settings apply, and that they stop a large scratch
buffer from being page-faulted in again on every reuse."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from cv_jax.runtime import host_malloc

ALL = [(param, value) for param, value, _ in host_malloc.SETTINGS]


def test_settings_apply_with_glibc_and_the_cpu_backend_only_and_not_when_switched_off():
    assert host_malloc.settings_to_apply({}, "glibc", []) == ALL
    assert host_malloc.settings_to_apply({}, "", []) == []  # musl, macOS: no glibc mallopt
    assert host_malloc.settings_to_apply({}, "glibc", ["xla_cuda13"]) == []  # measured: CPU
    assert host_malloc.settings_to_apply({"CV_JAX_MALLOC_DEFAULTS": "0"}, "glibc", []) == []


def test_a_malloc_variable_the_user_set_wins():
    pairs = host_malloc.settings_to_apply({"MALLOC_ARENA_MAX": "4"}, "glibc", [])
    assert pairs == [p for p in ALL if p[0] != host_malloc.M_ARENA_MAX]


def test_accelerator_plugins_are_found_in_the_jax_plugins_namespace(tmp_path, monkeypatch):
    assert "xla_cuda13" not in host_malloc.accelerator_plugins()
    (tmp_path / "jax_plugins" / "xla_cuda13").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "xla_cuda13" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "xla_cuda13" in host_malloc.accelerator_plugins()


# A worker thread (as XLA:CPU's are) mallocs, touches and frees an 80 MB block twice and
# prints the page faults of the second round.
REUSE_FAULTS = textwrap.dedent("""
    import ctypes, resource, threading
    from cv_jax.runtime import cpu_defaults
    cpu_defaults.apply()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 80 << 20
    faults = []
    def rounds():
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = libc.malloc(size)
            ctypes.memset(block, 1, size)
            libc.free(block)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    thread = threading.Thread(target=rounds)
    thread.start()
    thread.join()
    print(faults[1])
""")


def _reuse_faults(**env) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", REUSE_FAULTS], env={**clean, **env},
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not host_malloc.settings_to_apply(
    {}, platform.libc_ver()[0], host_malloc.accelerator_plugins()),
    reason="applied with glibc and the CPU backend only")
def test_a_freed_large_block_is_reused_without_page_faults():
    pages = (80 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert _reuse_faults(CV_JAX_MALLOC_DEFAULTS="0") > pages // 2  # glibc: a fresh mmap
    assert _reuse_faults() < pages // 20  # cv_jax's settings: the same heap memory again
