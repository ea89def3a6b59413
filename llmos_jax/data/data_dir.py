"""Where data files live, and how a relative data path becomes a real one.

Experiments name their files relative to one data directory, so the same gin
file runs on a laptop, a cluster and CI with only that directory changed. The
directory is chosen, first match wins, by:

1. gin: ``data_dir.path = '/data/llmos'``;
2. the environment variable ``LLMOS_DATA_DIR``;
3. the default, ``../shared/data`` beside the repository checkout (the folder
   the tests and the recorded experiments use). For a non-editable install
   that folder rarely exists, so set one of the two above.

Absolute paths (and ``~/...``) are used as given; relative ones are joined to
the data directory. A missing path is a :class:`UserError` that names the
path, the setting it came from and both ways to move the data directory.
"""

from __future__ import annotations

import glob
import os
import pathlib

import gin

from llmos_jax.errors import UserError

DATA_DIR_ENV = "LLMOS_DATA_DIR"
"""Environment variable that sets the data directory when gin does not."""

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _REPO_ROOT.parent / "shared" / "data"
"""Used when neither gin nor ``LLMOS_DATA_DIR`` names a directory."""


@gin.configurable
def data_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
    """The data directory: gin's ``data_dir.path``, else ``$LLMOS_DATA_DIR``, else the default.

    Args:
      path: the directory; bound in gin, or passed directly.
    """
    if path is None:
        path = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return pathlib.Path(path).expanduser()


def _where(setting: str, root: pathlib.Path) -> str:
    return (
        f"relative paths are read from the data directory {str(root)!r}, set by gin "
        f"data_dir.path or ${DATA_DIR_ENV} (default {str(DEFAULT_DATA_DIR)!r}); fix {setting} "
        "or point the data directory at the folder that holds it"
    )


def resolve_data_path(path: str | os.PathLike, setting: str, *, must_exist: bool = True,
                      root: pathlib.Path | None = None) -> pathlib.Path:
    """``path`` made absolute against the data directory.

    Args:
      path: absolute, ``~``-prefixed, or relative to the data directory.
      setting: the gin parameter or flag the path came from, for messages.
      must_exist: raise when nothing is at the resolved path.
      root: the data directory to use; defaults to :func:`data_dir` now.

    Raises:
      UserError: ``must_exist`` and the resolved path does not exist.
    """
    root = data_dir() if root is None else root
    resolved = pathlib.Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = root / resolved
    if must_exist and not resolved.exists():
        raise UserError(f"{setting}={str(path)!r}: {str(resolved)!r} does not exist; "
                        f"{_where(setting, root)}.")
    return resolved


def resolve_data_files(pattern: str | os.PathLike, setting: str, *,
                       root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """The files matching a glob pattern (``*``, ``?``, ``[...]``, ``**``), sorted.

    A pattern without wildcards names one file; ``root`` is as in
    :func:`resolve_data_path`.

    Raises:
      UserError: no file matches.
    """
    root = data_dir() if root is None else root
    resolved = resolve_data_path(pattern, setting, must_exist=False, root=root)
    files = sorted(
        pathlib.Path(match)
        for match in glob.glob(str(resolved), recursive=True)
        if os.path.isfile(match)
    )
    if not files:
        raise UserError(
            f"{setting}={str(pattern)!r}: no file matches {str(resolved)!r}; "
            f"{_where(setting, root)}."
        )
    return files
