"""Where `llmos train` keeps compiled XLA programs between runs."""

import os
import subprocess
import sys
import textwrap

from llmos_jax import runtime


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("LLMOS_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.compilation_cache_dir() == str(tmp_path / "xdg" / "llmos_jax" / "xla")
    monkeypatch.setenv("LLMOS_COMPILATION_CACHE", str(tmp_path / "mine"))
    assert runtime.compilation_cache_dir() == str(tmp_path / "mine")
    monkeypatch.setenv("LLMOS_COMPILATION_CACHE", "off")
    assert runtime.compilation_cache_dir() is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert runtime.compilation_cache_dir() == str(tmp_path / "jax")


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    """The cache is JAX's own; this checks that `configure_host_runtime` turns it on."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp
        from llmos_jax import runtime
        runtime.configure_host_runtime()
        jax.monitoring.register_event_listener(lambda event, **_: print(event))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
    """)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["LLMOS_COMPILATION_CACHE"] = str(tmp_path / "cache")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=120, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert entries, "the first run wrote no compiled program"
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "/jax/compilation_cache/cache_hits" not in first.stdout
    assert "/jax/compilation_cache/cache_hits" in second.stdout
