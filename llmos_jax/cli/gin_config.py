"""Parse gin files and bindings, turning every gin mistake into one clear UserError.

gin's own errors are terse ("No configurable matching 'x'") and point at the
wrong layer of includes. We let gin do the real parse; only when it fails do we
re-read the same inputs with gin's own statement parser to name the exact file,
line or flag at fault and suggest a fix. A config gin accepts is never second
guessed, so features we don't model (dynamic registration, scopes, macros)
keep working.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import re
import tokenize
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gin
import llmos_jax
from gin import config_parser
from llmos_jax.data import tensorflow_host
from llmos_jax.errors import did_you_mean
from llmos_jax.errors import UserError

# Modules whose import registers the gin configurables a training run uses.
# The one list of them: add a module here when it defines new configurables.
CONFIGURABLE_MODULES: tuple[str, ...] = (
    *tensorflow_host.SEQIO_CONFIGURABLE_MODULES,  # the data modules (listed once, there)
    "llmos_jax.training.schedules",
    "llmos_jax.training.trainer",
    "llmos_jax.training.fault_injection",
)
# Those of them that import seqio and TensorFlow (imported late by `defer_seqio`).
SEQIO_CONFIGURABLE_MODULES = frozenset(tensorflow_host.SEQIO_CONFIGURABLE_MODULES)
# Packages that only the seqio task modules need. A host without them (a GPU
# image with no TensorFlow) still trains from split snapshots
# (LMBatches.snapshot_dir), so modules failing on these are skipped, not fatal.
SEQIO_PACKAGES = frozenset({"seqio", "tensorflow", "tensorflow_text"})
_skipped_for_missing_seqio: list[str] = []

_REPO_ROOT = Path(llmos_jax.__file__).resolve().parent.parent
# Bounds the scan for "did you mean" candidates, which may start in a huge cwd.
_SCAN_MAX_DEPTH = 4
_SCAN_MAX_DIRS = 2000
_DYNAMIC_REGISTRATION = "__gin__.dynamic_registration"


def gin_overrides(arguments: Sequence[str]) -> list[str]:
    """Gin lines from a tool's leftover `--gin.NAME=VALUE` arguments (T5X style).

    Raises:
      UserError: an argument that is not such an override, named.
    """
    bindings = []
    for item in arguments:
        if not item.startswith("--gin.") or "=" not in item:
            raise UserError(f"unrecognised argument {item!r}; overrides look like --gin.NAME=VALUE")
        key, value = item[len("--gin."):].split("=", 1)
        bindings.append(f"{key} = {value}")
    return bindings


def parse_tool_args(parser: Any, argv: Sequence[str]) -> tuple[Any, list[str]]:
    """A tool's argparse flags, and its `--gin.NAME=VALUE` overrides as gin lines.

    Anything else left over ends the tool through `parser.error`, naming it.
    """
    args, rest = parser.parse_known_args(argv)
    try:
        return args, gin_overrides(rest)
    except UserError as error:
        parser.error(str(error))


def parse_gin(
    gin_files: Sequence[str],
    bindings: Sequence[str],
    search_paths: Sequence[str] = (),
    *,
    binding_sources: Sequence[str] | None = None,
    configurable_modules: Sequence[str] = CONFIGURABLE_MODULES,
    finalize: bool = True,
    defer_seqio: bool = False,
) -> None:
    """Parses gin files, then bindings (later ones win), into gin's global config.

    The config left by an earlier call is cleared first.

    Args:
      gin_files: paths; relative ones are looked up in `gin_search_dirs` order.
      bindings: gin statements such as "train.num_steps = 20".
      search_paths: extra directories for gin files and their `include`s.
      binding_sources: how each binding was given (e.g. "--gin.train.num_steps"),
        so errors name what the user typed; defaults to the binding text.
      configurable_modules: modules imported first so their configurables exist.
      finalize: lock the config afterwards, as T5X does.
      defer_seqio: parse first without the `SEQIO_CONFIGURABLE_MODULES` (which
        import TensorFlow), and import them only when the config names one of
        their configurables (`llmos train`: a run on the numpy pipeline never
        loads TensorFlow; a run on a seqio Task loads it when it reads data).

    Raises:
      UserError: naming the file, line or binding at fault and a likely fix.
    """
    if binding_sources is None:
        binding_sources = [f"binding {binding!r}" for binding in bindings]
    if len(binding_sources) != len(bindings):
        raise ValueError("binding_sources must give one source per binding")
    dirs = gin_search_dirs(search_paths)
    files = [resolve_gin_file(name, dirs) for name in gin_files]
    for directory in dirs[1:]:  # gin always searches the cwd itself.
        if str(directory) not in _gin_search_prefixes():
            gin.add_config_file_search_path(str(directory))
    deferred = [module for module in configurable_modules
                if defer_seqio and module in SEQIO_CONFIGURABLE_MODULES]
    # Slow (jax): after cheap checks.
    import_configurable_modules([m for m in configurable_modules if m not in deferred])
    if deferred:
        try:  # Most configs name no seqio configurable: then TensorFlow is never imported.
            _parse_files_and_bindings(files, bindings, finalize)
            return
        except Exception:  # A configurable not registered yet, or a real mistake: see below.
            import_configurable_modules(deferred)
    try:
        _parse_files_and_bindings(files, bindings, finalize)
    except Exception as gin_error:  # Every failure here comes from the config.
        _raise_first_problem(files, bindings, binding_sources, dirs)
        message = str(gin_error).replace("\n", " ")
        raise UserError(f"invalid gin config: {message}") from gin_error


def _parse_files_and_bindings(files: Sequence[Path], bindings: Sequence[str],
                              finalize: bool) -> None:
    # A fresh, unlocked config for every command, so several run in one process (a notebook).
    gin.clear_config()
    with _include_probes():
        gin.parse_config_files_and_bindings(
            [str(path) for path in files], list(bindings), finalize_config=finalize
        )


class _DropPathNotFound(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


def _false_on_error(exists: Callable[[str], bool]) -> Callable[[str], bool]:
    def checked(path: str) -> bool:
        try:
            return exists(path)
        except (TypeError, ImportError, ValueError):
            return False
    return checked


@contextlib.contextmanager
def _include_probes():
    """Makes gin's probing of search folders for an `include` quiet and safe.

    Gin logs an ERROR for every search folder an include is not in; those are
    hidden. Its package-resource reader also raises TypeError when the
    include's folder names a namespace package on `sys.path` (e.g. a `runs/`
    folder in the cwd under `python -m`), instead of moving on to the next
    search folder; such probes count as "not here". A genuinely missing
    include still fails, and is reported by our own message.
    """
    readers = gin.config._FILE_READERS  # Private: gin offers no public hook.
    original = list(readers)
    readers[:] = [(reader, _false_on_error(exists)) for reader, exists in original]
    root = logging.getLogger()
    drop = _DropPathNotFound()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        readers[:] = original


def import_configurable_modules(modules: Sequence[str] = CONFIGURABLE_MODULES) -> None:
    """Imports `modules`, turning a missing third-party package into an install hint.

    TensorFlow (under seqio) is imported first, quietly and kept off the GPUs
    (`data.tensorflow_host`), so the data modules below find it loaded.
    """
    if any(module.startswith("llmos_jax.data.") for module in modules):
        try:
            importlib.import_module("llmos_jax.data.tensorflow_host").import_tensorflow()
        except ModuleNotFoundError as error:
            if error.name != "tensorflow":
                raise
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            package = (error.name or "").split(".")[0]
            if package == "llmos_jax":
                raise  # Our own module missing is a bug, not a user mistake.
            if package in SEQIO_PACKAGES and module.startswith("llmos_jax.data."):
                if module not in _skipped_for_missing_seqio:
                    _skipped_for_missing_seqio.append(module)
                    logging.getLogger("llmos_jax").info(
                        "%s not imported (%s is not installed): seqio tasks are unavailable; "
                        "train from split snapshots (LMBatches.snapshot_dir)", module, package)
                continue
            raise UserError(
                f"cannot import {module}: package '{error.name}' is not installed; "
                "install the training extras with: pip install 'llmos_jax[train]'"
            ) from error


def gin_search_dirs(search_paths: Sequence[str] = ()) -> list[Path]:
    """Directories searched for relative gin paths, in order.

    The cwd, then `search_paths`, then the repository's `gin/`, then the
    repository root so that `experiments/...` paths work from anywhere.
    """
    dirs = [Path.cwd()]
    for search_path in search_paths:
        directory = Path(search_path).expanduser().resolve()
        if not directory.is_dir():
            raise UserError(
                f"gin search path '{search_path}' is not a directory; "
                "pass an existing folder, e.g. --gin_search_path=./configs"
            )
        dirs.append(directory)
    if (_REPO_ROOT / "gin").is_dir():
        dirs.append(_REPO_ROOT / "gin")
    if (_REPO_ROOT / "experiments").is_dir():
        dirs.append(_REPO_ROOT)
    return list(dict.fromkeys(dirs))


def resolve_gin_file(name: str, dirs: Sequence[Path]) -> Path:
    """Returns the first existing `name` under `dirs`, or raises a UserError."""
    path = _find_gin_file(name, dirs)
    if path is None:
        raise UserError(f"gin file '{name}' not found{_not_found_hint(name, dirs)}")
    return path


def _find_gin_file(name: str, dirs: Sequence[Path]) -> Path | None:
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [d / path for d in dirs]
    return next((c for c in candidates if c.is_file()), None)


def _not_found_hint(name: str, dirs: Sequence[Path]) -> str:
    path = Path(name).expanduser()
    if path.is_absolute():
        siblings = _gin_files_under(path.parent) if path.parent.is_dir() else []
        return "." + did_you_mean(name, [str(path.parent / s) for s in siblings])
    looked_in = ", ".join(str(d) for d in dirs)
    candidates = [f for d in dirs for f in _gin_files_under(d)]
    return f" (looked in: {looked_in})." + did_you_mean(name, candidates)


def _gin_files_under(root: Path) -> list[str]:
    """Relative paths of *.gin files below `root`, skipping hidden folders."""
    found: list[str] = []
    for visited, (dirpath, dirnames, filenames) in enumerate(os.walk(root)):
        relative = Path(dirpath).relative_to(root)
        if visited >= _SCAN_MAX_DIRS:
            break
        dirnames[:] = [
            d
            for d in sorted(dirnames)
            if not d.startswith((".", "__")) and len(relative.parts) < _SCAN_MAX_DEPTH
        ]
        found += [(relative / f).as_posix() for f in filenames if f.endswith(".gin")]
    return found


def _gin_registry() -> Any:
    """gin's registry of configurables; private in gin, but the only list of names."""
    return gin.config._REGISTRY  # pylint: disable=protected-access


def _gin_search_prefixes() -> list[str]:
    """Folders gin already searches; read so repeated parses don't add duplicates."""
    return gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access


# --- Diagnosis: runs only after gin has rejected the config. -------------------

Where = Callable[[int | None], str]


def _raise_first_problem(
    files: Sequence[Path],
    bindings: Sequence[str],
    sources: Sequence[str],
    dirs: Sequence[Path],
) -> None:
    """Re-reads the inputs in gin's order; raises a UserError at the first fault."""
    visited: set[Path] = set()
    for path in files:
        _check_file(path, dirs, visited)
    for binding, source in zip(bindings, sources):
        _check_statements(binding, lambda line, source=source: f"in {source}", dirs, visited)


def _check_file(path: Path, dirs: Sequence[Path], visited: set[Path]) -> None:
    if path.resolve() in visited:
        return
    visited.add(path.resolve())
    shown = _display(path)

    def where(line: int | None) -> str:
        return f"in file '{shown}'" + (f" line {line}" if line else "")

    _check_statements(path.read_text(), where, dirs, visited)


def _check_statements(
    text: str, where: Where, dirs: Sequence[Path], visited: set[Path]
) -> None:
    delegate = _RecordingDelegate()
    dynamic_registration = False  # Selectors then name imports, not the registry.
    try:
        for statement in config_parser.ConfigParser(text, delegate):
            here = where(statement.location.line_num)
            references, delegate.references = delegate.references, []
            if isinstance(statement, config_parser.ImportStatement):
                dynamic_registration |= statement.module == _DYNAMIC_REGISTRATION
            elif isinstance(statement, config_parser.IncludeStatement):
                _check_include(statement.filename, here, dirs, visited)
            elif dynamic_registration:
                continue
            elif isinstance(statement, config_parser.BlockDeclaration):
                _lookup_configurable(statement.selector, here)
            elif statement.arg_name:  # A BindingStatement; no arg_name means a macro.
                _check_parameter(statement.selector, statement.arg_name, here)
            for reference in references:
                _lookup_configurable(reference.rsplit("/", 1)[-1], here, "@")
    except SyntaxError as error:
        raise UserError(f"gin syntax error {where(error.lineno)}: {_syntax_detail(error)}")
    except tokenize.TokenError:
        raise UserError(
            f"gin syntax error {where(None)}: a bracket or quote is never closed"
        )


class _RecordingDelegate(config_parser.ParserDelegate):
    """Collects `@references` for checking; the parsed values are thrown away."""

    def __init__(self) -> None:
        self.references: list[str] = []

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> None:
        self.references.append(scoped_configurable_name)

    def macro(self, macro_name: str) -> None:
        return None


def _check_include(name: str, here: str, dirs: Sequence[Path], visited: set[Path]) -> None:
    path = _find_gin_file(name, dirs)
    if path is None:
        raise UserError(
            f"gin file '{name}' included {here} was not found"
            + _not_found_hint(name, dirs)
        )
    _check_file(path, dirs, visited)


def _lookup_configurable(selector: str, here: str, prefix: str = "") -> Any:
    registry = _gin_registry()
    try:
        configurable = registry.get_match(selector)
    except KeyError:
        matches = ", ".join(registry.matching_selectors(selector))
        raise UserError(
            f"gin configurable '{prefix}{selector}' {here} is ambiguous: it matches "
            f"{matches}; write one of these full names instead"
        ) from None
    if configurable is None:
        full_names = [name for name, _ in registry.items()]
        # Compare like with like: `foo` with short names, `module.foo` with full ones.
        names = full_names if "." in selector else [n.rsplit(".", 1)[-1] for n in full_names]
        hint = did_you_mean(selector, names) or (
            " No similar name is registered; is the module defining it imported?"
        )
        if _skipped_for_missing_seqio:
            hint += (f" ({', '.join(_skipped_for_missing_seqio)} could not be imported because "
                     "seqio/TensorFlow are not installed; install 'llmos_jax[data]', or train "
                     "from split snapshots with LMBatches.snapshot_dir)")
        raise UserError(f"unknown gin configurable '{prefix}{selector}' {here}.{hint}")
    return configurable


def _check_parameter(selector: str, arg_name: str, here: str) -> None:
    configurable = _lookup_configurable(selector, here)
    try:
        signature = inspect.signature(configurable.wrapped)
    except (TypeError, ValueError):
        return  # Signature unknown (e.g. a C function): leave it to gin's message.
    parameters = signature.parameters
    if arg_name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        return
    names = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and not (configurable.is_method and name == "self")
        and (not configurable.allowlist or name in configurable.allowlist)
        and name not in (configurable.denylist or ())
    ]
    listing = f" Its parameters are: {', '.join(names)}." if names else " It takes no parameters."
    raise UserError(
        f"{selector} has no parameter '{arg_name}' ({here})."
        f"{did_you_mean(arg_name, names)}{listing}"
    )


def _syntax_detail(error: SyntaxError) -> str:
    detail = (error.msg or "").strip().splitlines()[-1].strip()
    unparsed = re.fullmatch(r"Failed to parse token '(.*)'", detail)
    if unparsed:
        token = unparsed.group(1)
        return (
            f"cannot parse the value {token}; strings need quotes, e.g. '{token}' "
            f"(on the command line: \"'{token}'\")"
        )
    line = (error.text or "").strip()
    return f"{detail} ({line})" if line else detail


def _display(path: Path) -> str:
    """`path` relative to the cwd when inside it, so messages stay short."""
    try:
        return path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)
