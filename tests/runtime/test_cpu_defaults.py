"""cv_jax.runtime: the CPU defaults the commands apply (XLA flags, glibc malloc), and that
importing cv_jax changes nothing in the process."""

import os
import subprocess
import sys

from cv_jax.runtime import cpu_defaults, host_malloc, xla_flags


def test_cpu_flags_are_added_once_and_only_for_measured_jaxlib_versions():
    flag = "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    version = xla_flags.MEASURED_ON[0]
    assert xla_flags.with_cpu_flags("", version) == flag
    assert xla_flags.with_cpu_flags("--a=1", version) == f"--a=1 {flag}"
    assert xla_flags.with_cpu_flags(flag, version) == flag  # never twice
    mine = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert xla_flags.with_cpu_flags(mine, version) == mine  # the user's value wins
    assert xla_flags.with_cpu_flags("--a=1", "0.0.1") == "--a=1"  # unmeasured: unchanged
    assert xla_flags.with_cpu_flags("--a=1", None) == "--a=1"


def _run(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def test_importing_cv_jax_leaves_xla_flags_as_they_were():
    code = ("import os, cv_jax, cv_jax.main, cv_jax.training.train, cv_jax.workflows.vectorized; "
            "print(os.environ.get('XLA_FLAGS'))")
    assert _run(code) == "None"
    assert _run(code, XLA_FLAGS="--xla_mine=1") == "--xla_mine=1"


def test_apply_adds_the_measured_flags_on_the_cpu_backend_only(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("CV_JAX_MALLOC_DEFAULTS", "0")  # mallopt is process-wide: not here
    monkeypatch.setattr(host_malloc, "accelerator_plugins", lambda: ["xla_cuda13"])
    assert cpu_defaults.apply() is False
    assert "XLA_FLAGS" not in os.environ
    monkeypatch.setattr(host_malloc, "accelerator_plugins", lambda: [])
    assert cpu_defaults.apply() is True
    expected = xla_flags.with_cpu_flags("", xla_flags._jaxlib_version())
    assert os.environ["XLA_FLAGS"] == expected
