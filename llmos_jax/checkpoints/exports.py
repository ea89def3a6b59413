"""Exports: parameters alone (no optimizer state) for inference, swapped into place whole.

An export folder (`model_dir/export`, `model_dir/best`) holds `params/`
(Orbax), `meta.json`, any extra files (vocabulary, model card) and
`SHA256SUMS.json`. It is written to a hidden sibling, `.<name>.partial`,
checksummed, and only then swapped into place, so a reader never sees half
an export and a failed export leaves the old one as it was. On Linux the swap
is one `renameat2(RENAME_EXCHANGE)` call; elsewhere the old folder is renamed
out of the way first. On several hosts every host writes its shards into the
same partial folder and the swap waits until all of them are done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import pathlib
import shutil
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from llmos_jax.checkpoints.manifest import MANIFEST_NAME, check_manifest, has_manifest, write_manifest
from llmos_jax.errors import UserError

log = logging.getLogger("llmos_jax.checkpoints")

PARAMS_DIRNAME = "params"
META_FILENAME = "meta.json"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _partial_dir(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.partial")


def _replaced_dir(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.replaced")


def _sync_hosts(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _exchange(first: pathlib.Path, second: pathlib.Path) -> bool:
    """Swaps two paths in one atomic step (Linux `renameat2`); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                       _RENAME_EXCHANGE)
    return result == 0


def _swap_into_place(new: pathlib.Path, target: pathlib.Path) -> None:
    """Puts the finished folder `new` at `target`, replacing what was there."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # Now the old export.
        return
    replaced = _replaced_dir(target)
    shutil.rmtree(replaced, ignore_errors=True)
    os.rename(target, replaced)
    os.rename(new, target)
    shutil.rmtree(replaced)


def export_params(directory: str | os.PathLike, params, meta: Mapping[str, Any], *,
                  extra_files: Mapping[str, bytes] | None = None) -> pathlib.Path:
    """Writes parameters alone for inference, with their metadata, and swaps them into place.

    Args:
      directory: The export folder.
      params: The parameters (every host passes its shards).
      meta: Written as `meta.json`.
      extra_files: Relative path -> contents, written beside them (the vocabulary
        files and model card that make an export self-contained); part of the
        checksums and of the swap.

    Raises:
      UserError: the export could not be written; the previous export at
        `directory`, if any, is unchanged.
    """
    path = pathlib.Path(directory).absolute()
    partial = _partial_dir(path)
    chief = jax.process_index() == 0
    try:
        if chief:
            shutil.rmtree(partial, ignore_errors=True)  # What an interrupted export left.
            partial.mkdir(parents=True)
        _sync_hosts("llmos_export_start")
        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(partial / PARAMS_DIRNAME, params, force=True)
            checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
        if chief:
            (partial / META_FILENAME).write_text(json.dumps(dict(meta), indent=2, sort_keys=True))
            for name, contents in (extra_files or {}).items():
                target = partial / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(contents)
            write_manifest(partial)
    except Exception as error:
        if chief:
            shutil.rmtree(partial, ignore_errors=True)
        kept = ("the previous export there is unchanged" if path.exists()
                else "nothing was written there")
        raise UserError(f"could not write the export {path}: {type(error).__name__}: "
                        f"{str(error)[:400]}; {kept}. Free disk space or fix the folder's "
                        "permissions and export again.") from error
    _sync_hosts("llmos_export_written")  # Every host's shards are in before the swap.
    if chief:
        _swap_into_place(partial, path)
    _sync_hosts("llmos_export_swapped")
    return path


def check_export(directory: str | os.PathLike, *, flag: str = "--checkpoint") -> None:
    """Refuses an export whose files differ from its checksums.

    An export written before exports had checksums (no `SHA256SUMS.json`) is
    read unverified, with a warning.

    Raises:
      UserError: naming the damaged file; nothing is changed on disk.
    """
    path = pathlib.Path(directory).absolute()
    if not has_manifest(path):
        log.warning("%s has no %s (exported before exports had checksums): reading it "
                    "unverified", path, MANIFEST_NAME)
        return
    damage = check_manifest(path)
    if damage is not None:
        raise UserError(f"{flag}={str(path)!r}: the export is damaged: {damage}. Nothing was "
                        "changed. Export it again, or give the run's model_dir to use its "
                        "newest intact checkpoint.")


def load_exported_params(directory: str | os.PathLike, target=None):
    """Reads an export written by `export_params`; `target` gives shardings if wanted.

    Raises:
      UserError: no export there, or its files differ from their checksums.
    """
    path = pathlib.Path(directory).absolute()
    if not (path / PARAMS_DIRNAME).exists():
        raise UserError(f"no exported params at {path}/{PARAMS_DIRNAME}; export with "
                        "`llmos train` first.")
    check_export(path, flag="export")
    checkpointer = ocp.StandardCheckpointer()
    if target is None:
        return checkpointer.restore(path / PARAMS_DIRNAME)
    return checkpointer.restore(path / PARAMS_DIRNAME, target)
