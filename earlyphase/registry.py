"""Registries of models, datasets, recorders and experiments: one registration style for all four,
built-ins and plug-ins alike (docs/plugins.md).

An entry comes from one of three places, recorded as its origin:

* ``earlyphase``: the package's own providers (the modules each registry names) register their
  entries when they are imported, which happens on the registry's first lookup;
* a plug-in: an installed package that declares an entry point in the group ``earlyphase.plugins``
  (a module, imported, or a callable, called); every process loads them on its first lookup, so
  pool workers and Ray workers see what the parent sees;
* run time: ``earlyphase.register_model(...)`` in a script or notebook. Such entries reach worker
  processes by reference (pickled as module and name, so the worker imports the module that defines
  them); one defined in ``__main__`` cannot, and asking workers to use it is a one-line UserError.

This module sits at the bottom of the package: it imports nothing of earlyphase but the error type,
and names its providers as strings, so no layer imports upward to fill a registry.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

ENTRY_POINT_GROUP = "earlyphase.plugins"
BUILTIN = "earlyphase"


@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, the object, where it comes from, and what else it declared."""

    name: str
    value: Any
    origin: str  # "earlyphase", "plugin NAME (DIST VERSION)" or "run time (MODULE)"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> bool:
        return self.origin.startswith("run time")


_origin_stack: list[str] = []  # set while the package's providers or a plug-in register


@contextlib.contextmanager
def _registering_as(origin: str) -> Iterator[None]:
    _origin_stack.append(origin)
    try:
        yield
    finally:
        _origin_stack.pop()


def _origin(value: Any) -> str:
    """Where a registration comes from: the loader's context, else the package itself for its own
    objects, else run time."""
    if _origin_stack:
        return _origin_stack[-1]
    module = getattr(value, "__module__", None) or getattr(type(value), "__module__", "?")
    return BUILTIN if module == BUILTIN or module.startswith(BUILTIN + ".") else f"run time ({module})"


class Registry:
    """Named entries of one kind. ``providers`` are the package's modules that register the built-ins."""

    def __init__(self, kind: str, plural: str, providers: tuple[str, ...]) -> None:
        self.kind, self.plural, self.providers = kind, plural, providers
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, value: Any, **meta: Any) -> Any:
        """Add ``value`` under ``name``; returns ``value`` (so it works as a decorator's body)."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise UserError(f"a {self.kind} name must be a non-empty string without surrounding spaces, got {name!r}")
        origin = _origin(value)
        old = self._entries.get(name)
        if old is not None and old.value is value and origin.startswith("run time"):
            origin = old.origin  # the same object again (a worker re-registering, a re-imported module)
        elif old is not None and old.value is not value and not (old.runtime and origin.startswith("run time")):
            raise UserError(f"{self.kind} {name!r} is already registered by {old.origin}; "
                            f"register yours under another name")
        self._entries[name] = Entry(name, value, origin, dict(meta))
        return value

    def unregister(self, name: str) -> None:
        """Forget a run-time entry (built-ins and plug-ins stay)."""
        entry = self._entries.get(name)
        if entry is not None and entry.runtime:
            del self._entries[name]

    def load(self) -> None:
        """Import the package's providers (once), then the installed plug-ins (once per process)."""
        if not self._loaded:
            self._loaded = True
            with _registering_as(BUILTIN):
                for module in self.providers:
                    importlib.import_module(module)
        load_plugins()

    def get(self, name: str, *, key: str | None = None) -> Entry:
        """The entry, or a one-line UserError naming the closest known names."""
        self.load()
        entry = self._entries.get(name)
        if entry is None:
            raise UserError(self.unknown(name, key))
        return entry

    def unknown(self, name: str, key: str | None = None) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        where = f"{key}: " if key else ""
        return f"{where}unknown {self.kind} {name!r}{hint}; known {self.plural}: {', '.join(self._entries)}"

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def names(self) -> list[str]:
        self.load()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        self.load()
        return list(self._entries.values())


MODEL_REGISTRY = Registry("model", "models", ("earlyphase.models",))
DATASET_REGISTRY = Registry("dataset", "datasets", ("earlyphase.data",))
RECORDER_REGISTRY = Registry("recorder", "recorders", ("earlyphase.train.recorders", "earlyphase.probes"))
EXPERIMENT_REGISTRY = Registry("experiment", "experiments", ("earlyphase.experiments",))
REGISTRIES = {r.kind: r for r in (MODEL_REGISTRY, DATASET_REGISTRY, RECORDER_REGISTRY, EXPERIMENT_REGISTRY)}


# ----------------------------------------------------------------------------------------------
# plug-ins: entry points in the group ``earlyphase.plugins``

_plugins: dict[str, str] = {}  # entry-point name -> "DIST VERSION", in load order
_plugins_loaded = False
_preset_dirs: list[tuple[Path, str]] = []  # (directory, origin) of presets plug-ins ship


def load_plugins() -> dict[str, str]:
    """Load every installed plug-in once in this process; returns {name: "DIST VERSION"}."""
    global _plugins_loaded
    if _plugins_loaded:
        return dict(_plugins)
    _plugins_loaded = True  # before loading: a plug-in that looks something up must not recurse
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        version = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"
        origin = f"plugin {ep.name} ({version})"
        try:
            with _registering_as(origin):
                obj = ep.load()
                if callable(obj):
                    obj()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of a plug-in is reported as that plug-in's
            raise UserError(f"plug-in {ep.name!r} ({ep.value}, from {version}) failed to load: "
                            f"{type(e).__name__}: {e}; fix or uninstall it") from None
        _plugins[ep.name] = version
    return dict(_plugins)


def register_preset_dir(path: str | Path) -> None:
    """Presets a plug-in ships: ``path/<preset>/<kind>.toml`` (kind: ``train`` or an experiment name)."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"preset directory {p} does not exist; register a directory holding <preset>/<kind>.toml")
    origin = _origin_stack[-1] if _origin_stack else "run time"
    if all(d != p for d, _ in _preset_dirs):
        _preset_dirs.append((p, origin))


def preset_dirs() -> list[tuple[Path, str]]:
    load_plugins()
    return list(_preset_dirs)


# ----------------------------------------------------------------------------------------------
# run-time entries, carried to worker processes by reference


def portable_entries(used: set[tuple[str, str]]) -> list[tuple[str, str, Any, dict]]:
    """The run-time entries, as (kind, name, value, meta) to send to worker processes. An entry the
    runs use (``used`` holds (kind, name) pairs) that cannot travel is a one-line UserError."""
    out = []
    for reg in REGISTRIES.values():
        for e in reg.entries():
            if not e.runtime:
                continue
            problem = _not_portable(e)
            if problem is None:
                out.append((reg.kind, e.name, e.value, e.meta))
            elif (reg.kind, e.name) in used:
                raise UserError(f"{reg.kind} {e.name!r} is {problem}, so worker processes (--workers N > 1, Ray) "
                                f"cannot import it; put it in a module and register it there, or ship it as a "
                                f"plug-in (entry point group {ENTRY_POINT_GROUP!r}, docs/plugins.md)")
    return out


def _not_portable(e: Entry) -> str | None:
    for obj in (e.value, *e.meta.values()):
        if not callable(obj):
            continue
        module, qualname = getattr(obj, "__module__", ""), getattr(obj, "__qualname__", "")
        if module == "__main__":
            return "defined in __main__ (a notebook or a script)"
        if "<locals>" in qualname or "<lambda>" in qualname:
            return "a lambda or a function defined inside another"
    return None


def install_entries(entries: list[tuple[str, str, Any, dict]]) -> None:
    """In a worker: register what the parent registered at run time (unpickling imported its modules)."""
    for kind, name, value, meta in entries:
        reg = REGISTRIES[kind]
        reg.load()
        if name not in reg._entries or reg._entries[name].value is not value:
            reg.register(name, value, **meta)
