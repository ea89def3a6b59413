"""Checksums of saved files: written at save time, checked before anything is restored.

Orbax's commit marker and metadata catch a save that never finished or a
file cut short, but not a flipped byte: that restores silently wrong values.
So every checkpoint step folder and every export gets `SHA256SUMS.json`, the
size and SHA-256 of each of its files, and a restore first checks the files
against it. A checkpoint's manifest is written in two steps: its items' files
are hashed before Orbax commits the step (so a committed step always has
checksums), and the two files Orbax writes at the commit itself are added
after it (`complete_manifest`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

MANIFEST_NAME = "SHA256SUMS.json"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Damage:
    """Why saved files cannot be trusted: the file at fault and what is wrong with it.

    Attributes:
      path: The file (or folder) at fault.
      problem: What is wrong, e.g. "1024 bytes on disk, 2048 when saved".
    """

    path: pathlib.Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: pathlib.Path) -> list[pathlib.Path]:
    own = (MANIFEST_NAME, MANIFEST_NAME + ".partial")
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in own)


def _hash_all(directory: pathlib.Path, relative: list[str]) -> dict[str, str]:
    # hashlib releases the GIL on large buffers, so a few threads read files in parallel.
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(relative) or 1)) as pool:
        return dict(zip(relative, pool.map(lambda name: _sha256(directory / name), relative)))


def _write(directory: pathlib.Path, files: Mapping[str, Mapping[str, int | str]],
           complete: bool) -> None:
    partial = directory / (MANIFEST_NAME + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        json.dump({"algorithm": "sha256", "complete": complete, "files": files}, out, indent=1,
                  sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, directory / MANIFEST_NAME)


def _entries(directory: pathlib.Path, names: list[str]) -> dict[str, dict[str, int | str]]:
    digests = _hash_all(directory, names)
    return {name: {"bytes": (directory / name).stat().st_size, "sha256": digests[name]}
            for name in names}


def write_manifest(directory: str | os.PathLike, *, exclude: tuple[str, ...] = (),
                   complete: bool = True) -> dict[str, dict[str, int | str]]:
    """Hashes every file under `directory` and writes `SHA256SUMS.json` there, atomically.

    The manifest is written to a temporary name, flushed to disk and renamed, so
    a crash leaves either no manifest or a whole one.

    Args:
      directory: The folder.
      exclude: Relative paths left out (files that will still change).
      complete: False when more files are still to come (`complete_manifest`).

    Returns:
      Relative path -> {"bytes": size, "sha256": hex digest}.
    """
    directory = pathlib.Path(directory)
    names = [str(p.relative_to(directory)) for p in _files(directory)]
    files = _entries(directory, [name for name in names if name not in exclude])
    _write(directory, files, complete)
    return files


def complete_manifest(directory: str | os.PathLike) -> dict[str, dict[str, int | str]]:
    """Adds the files written since `write_manifest(..., complete=False)` and marks it complete."""
    directory = pathlib.Path(directory)
    files = read_manifest(directory)
    if isinstance(files, Damage):
        raise OSError(2, f"cannot complete the checksums: {files.problem}", str(files.path))
    names = [str(p.relative_to(directory)) for p in _files(directory)]
    files = {**files, **_entries(directory, [name for name in names if name not in files])}
    _write(directory, files, True)
    return files


def has_manifest(directory: str | os.PathLike) -> bool:
    return (pathlib.Path(directory) / MANIFEST_NAME).exists()


def _read(directory: pathlib.Path) -> dict[str, Any] | Damage:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest.get("files"), dict):
            raise TypeError("'files' is not a table")
        return manifest
    except FileNotFoundError:
        return Damage(path, "missing")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return Damage(path, f"unreadable ({type(error).__name__}: {error})")


def read_manifest(directory: pathlib.Path) -> Mapping[str, Mapping[str, int | str]] | Damage:
    """The manifest's file table, or the `Damage` that makes it unreadable."""
    manifest = _read(pathlib.Path(directory))
    return manifest if isinstance(manifest, Damage) else manifest["files"]


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether the manifest lists every file (False: written before a commit that then stopped)."""
    manifest = _read(pathlib.Path(directory))
    return not isinstance(manifest, Damage) and manifest.get("complete", True) is True


def check_manifest(directory: str | os.PathLike) -> Damage | None:
    """The first file under `directory` that differs from its manifest, or None if all match.

    Sizes are compared first (cheap, and the usual sign of a cut-short copy),
    then the SHA-256 of every file. Files added since the save are ignored.
    """
    directory = pathlib.Path(directory)
    files = read_manifest(directory)
    if isinstance(files, Damage):
        return files
    for name, recorded in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            return Damage(path, f"missing (saved with {recorded['bytes']} bytes)")
        size = path.stat().st_size
        if size != recorded["bytes"]:
            return Damage(path, f"{size} bytes on disk, {recorded['bytes']} when saved "
                                "(truncated or overwritten)")
    digests = _hash_all(directory, sorted(files))
    for name in sorted(files):
        if digests[name] != files[name]["sha256"]:
            return Damage(directory / name, "its SHA-256 differs from the one recorded at save "
                                            f"time in {MANIFEST_NAME} (altered on disk)")
    return None
