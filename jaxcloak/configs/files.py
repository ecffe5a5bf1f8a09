"""Run settings as TOML files and ``--set section.field=value`` overrides (library, no argparse).

The presets stay in code (:mod:`jaxcloak.configs.facecloak`, :mod:`jaxcloak.configs.map`) so an
installed wheel works without any file; a TOML file only changes fields of those presets.

File layout (every table optional; keys may use ``-`` or ``_``)::

    [facecloak]            # CloakConfig (jaxcloak.methods.facecloak.config)
    mode = "fixed"         # base preset: "fixed" (default) or "faithful"; also the field
    strength = "mid"       # base preset of the fixed mode: low | mid | high (default mid)
    eps_levels = 20        # any CloakConfig field, in the dataclass's units (see below)
    eot = ["jpeg", "blur"]

    [map]                  # MapConfig (jaxcloak.methods.map.config)
    preset = "demo"        # base preset: demo | paper (default chosen by the caller)
    steps = 60             # any MapConfig field

    [protect]              # bulk-job CLI option defaults, passed through (see protect_options)
    identity = "per-folder"

Units and values:

- Budgets are stored as fractions of the [0, 1] pixel range (``eps = 0.0784313725490196`` is
  20/255). ``eps_levels``, ``step_levels`` and ``region_eps_levels`` give ``eps``, ``step`` and
  ``region_eps`` in grey levels (0..255) instead, as the CLI's ``--eps`` does: ``eps_levels =
  20`` is exactly ``eps = 20 / 255``. Giving both spellings in one place is an error.
- TOML has no null: an optional field (``alpha_max``, ``real_weight``, ``step_decay``,
  ``remat``, ``unroll``, ``sm_t_max``) is set to None with the string ``"none"``.
- Tuples (``eot``) are arrays (``["jpeg", "blur"]``) or one comma-separated string.
- Numbers given to float fields may be integers; integer fields refuse ``40.0``.

``--set`` values are TOML values (``facecloak.eps=0.08``, ``facecloak.eot=["jpeg","blur"]``,
``facecloak.nesterov=true``, ``map.learning_rate=1e-5``); a value that is not valid TOML is
taken as a bare string (``map.projection=pcgrad``, ``facecloak.alpha_max=none``,
``facecloak.eot=jpeg,blur``); ``true``/``false`` are read case-insensitively for booleans;
string fields take the text as written (quotes optional).

Precedence, lowest first: code preset < TOML file < explicit CLI flags < ``--set``. The base
preset itself (``mode``/``strength``, ``preset``) is chosen with the same precedence.

Every error is a :class:`ConfigError` (a ``ValueError``) whose message names the file and/or
the ``section.key`` and, for an unknown key, suggests the closest known ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from ..methods.facecloak.config import CloakConfig
from ..methods.map.config import MapConfig
from . import facecloak as facecloak_presets
from . import map as map_presets

__all__ = [
    "LEVEL_FIELDS",
    "SECTIONS",
    "ConfigError",
    "apply_overrides",
    "as_argv",
    "dump_config",
    "load_config",
    "load_toml",
    "parse_set_value",
    "parse_sets",
    "protect_options",
    "resolve_facecloak",
    "resolve_map",
]

T = TypeVar("T")

#: The tables a config file may have.
SECTIONS = ("facecloak", "map", "protect")

#: CloakConfig fields that also take a ``<field>_levels`` spelling in grey levels (x / 255).
LEVEL_FIELDS = ("eps", "step", "region_eps")

#: Keys of a section that choose the base preset rather than set a field.
_SELECTORS: dict[str, dict[str, tuple[str, ...]]] = {
    "facecloak": {"strength": tuple(facecloak_presets.STRENGTHS)},
    "map": {"preset": tuple(map_presets.PRESETS)},
}

_CLASSES: dict[str, type] = {"facecloak": CloakConfig, "map": MapConfig}


class ConfigError(ValueError):
    """A config file, ``--set`` override or combination of settings that cannot be used."""


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def load_toml(path: str | Path) -> dict:
    """The TOML document at ``path`` as a dict (no layout checks).

    Raises :class:`ConfigError` naming the file when it is missing, unreadable, not UTF-8 or
    not valid TOML (the message carries tomllib's line and column).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: config file is not UTF-8 text ({e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load_config(path: str | Path) -> dict[str, dict]:
    """Read and check a config file: ``{"facecloak": {...}, "map": {...}, "protect": {...}}``.

    Every table is present in the result (empty when the file has none). The ``facecloak`` and
    ``map`` tables are checked key by key and returned typed, in field names (``eps_levels``
    becomes ``eps``; ``"none"`` becomes None; arrays become tuples), plus their preset
    selector (``strength``, ``preset``) when given; ``protect`` is :func:`protect_options`'s.
    Errors name the file: ``cfg.toml: facecloak.steps: expected an integer, got 'abc'``.
    """
    raw = load_toml(path)
    return _check_document(raw, where=f"{Path(path)}: ")


def _check_document(raw: Mapping, where: str = "") -> dict[str, dict]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}expected a table of sections, got {_show(raw)}")
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"{where}unknown table [{key}]{_suggest(str(key), SECTIONS)}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}{key} must be a table ([{key}]), got {_show(value)}")
    out: dict[str, dict] = {}
    for section in _CLASSES:
        out[section] = _normalize(section, raw.get(section) or {}, where=where)
    out["protect"] = _protect(raw.get("protect") or {}, where=where)
    return out


def _document(file_cfg: Mapping | None) -> dict[str, dict]:
    """A loaded or raw document (or None) in :func:`load_config`'s checked form."""
    if file_cfg is None:
        return {"facecloak": {}, "map": {}, "protect": {}}
    return _check_document(file_cfg)


# --------------------------------------------------------------------------------------------
# --set
# --------------------------------------------------------------------------------------------


def parse_set_value(text: str) -> Any:
    """A ``--set`` value: a TOML value when ``text`` is one, else the stripped text."""
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text.strip()
    return doc["v"] if list(doc) == ["v"] else text.strip()


def parse_sets(sets: Iterable[str]) -> dict[str, dict]:
    """``--set section.key=value`` strings -> ``{"facecloak": {...}, "map": {...},
    "protect": {...}}``, later ones winning.

    ``facecloak``/``map`` values are checked and typed against the field they name (as
    :func:`load_config` does, but parsing each value from text); ``protect`` values are
    :func:`parse_set_value`'s. Raises :class:`ConfigError` on a malformed item, an unknown
    section or key (with suggestions) or a value of the wrong type.
    """
    raw: dict[str, dict[str, str]] = {s: {} for s in SECTIONS}
    for item in sets:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        section, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(
                f"--set {item!r}: the key needs its section, e.g. facecloak.{key} or map.{key}"
            )
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {item!r}: unknown section {section!r}{_suggest(section, SECTIONS)}"
            )
        raw[section][_key(name)] = value
    out: dict[str, dict] = {}
    for section in _CLASSES:
        out[section] = _normalize(section, raw[section], text=True)
    out["protect"] = {k: parse_set_value(v) for k, v in raw["protect"].items()}
    return out


# --------------------------------------------------------------------------------------------
# applying
# --------------------------------------------------------------------------------------------


def apply_overrides(
    config: T, values: Mapping[str, Any], *, section: str | None = None, text: bool = False
) -> T:
    """``dataclasses.replace(config, ...)`` with ``values`` checked against the field types.

    ``config`` is any dataclass instance (CloakConfig, MapConfig, ...). ``values`` maps field
    names to typed values (from TOML or code; None sets an optional field to None), or, with
    ``text=True``, to ``--set`` strings parsed per field (:func:`parse_set_value`, bare
    ``none``, case-insensitive ``true``/``false``). CloakConfig also takes
    ``eps_levels``/``step_levels``/``region_eps_levels`` in grey levels. ``section`` labels
    the messages (default: ``facecloak`` for CloakConfig, ``map`` for MapConfig, else the class
    name). Preset selectors (``strength``, ``preset``) are not fields: see
    :func:`resolve_facecloak` / :func:`resolve_map`.

    Raises :class:`ConfigError`: ``facecloak.stpes: unknown key; did you mean 'steps'?``,
    ``facecloak.steps: expected an integer, got 'abc'``, or the dataclass's own check of the
    combined settings (``facecloak: mode must be 'faithful' or 'fixed', ...``).
    """
    cls = type(config)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"apply_overrides needs a dataclass instance, got {cls.__name__}")
    if section is None:
        section = next((s for s, c in _CLASSES.items() if c is cls), cls.__name__)
    fields = _normalize(section, values, text=text, cls=cls, selectors=False)
    return _replace(config, fields, section)


def resolve_facecloak(
    file_cfg: Mapping | None = None,
    sets: Iterable[str] = (),
    *,
    mode: str | None = None,
    strength: str | None = None,
    explicit: Mapping[str, Any] | None = None,
) -> CloakConfig:
    """The CloakConfig of a run: code preset < ``[facecloak]`` of the file < explicit CLI
    flags < ``--set facecloak.*``.

    Args:
      file_cfg: :func:`load_config`'s result (or a raw TOML dict, checked here), or None.
      sets: the ``--set`` strings (all sections; only ``facecloak.*`` is used here, the others
        are still checked).
      mode, strength: the CLI's ``--mode``/``--strength`` when the user gave them, else None
        (give the flags ``default=None``). The base preset is
        :func:`jaxcloak.configs.facecloak.get_config` of the mode and strength taken with the
        same precedence (``--set`` > flag > file > ``"fixed"``/``"mid"``); a strength other
        than mid with the faithful mode is an error.
      explicit: other flags the user gave, in field names (``{"eps_levels": args.eps,
        "eot": ...}``); None values are skipped, so flags left unset can be passed as they
        are. ``"iterations"`` is the CLI's ``--steps``: ``steps`` in the fixed mode,
        ``passes`` in the faithful one (decided after the mode is resolved).

    All layers are merged first and applied in one ``dataclasses.replace``, so settings that
    are only valid together (``mode = "fixed"`` with ``eot``) may come from different layers.
    """
    doc = _document(file_cfg)
    file_fc = dict(doc["facecloak"])
    set_fc = dict(parse_sets(sets)["facecloak"])
    flag_fc = _normalize("facecloak", _given(explicit, "iterations"), where="explicit ")
    chosen_mode = _pick("mode", set_fc, {"mode": mode} if mode else {}, flag_fc, file_fc)
    chosen_mode = chosen_mode or "fixed"
    chosen = _pick("strength", set_fc, {"strength": strength} if strength else {}, flag_fc, file_fc)
    for layer in (file_fc, flag_fc, set_fc):
        layer.pop("strength", None)
    if chosen_mode not in ("fixed", "faithful"):
        raise ConfigError(
            f"facecloak.mode: expected one of 'faithful', 'fixed', got {_show(chosen_mode)}"
        )
    if chosen_mode == "faithful" and chosen not in (None, "mid"):
        raise ConfigError(
            f"facecloak.strength {chosen!r} applies to the fixed mode; the faithful mode is the "
            "shipped run (leave strength out)"
        )
    try:
        base = facecloak_presets.get_config(chosen_mode, chosen or "mid")
    except ValueError as e:
        raise ConfigError(f"facecloak: {e}") from None
    iterations = (explicit or {}).get("iterations")
    if iterations is not None:
        name = "steps" if chosen_mode == "fixed" else "passes"
        if name in flag_fc:
            raise ConfigError(f"explicit facecloak.iterations and facecloak.{name}: give one")
        flag_fc.update(_normalize("facecloak", {name: iterations}, where="explicit "))
    fields = {**file_fc, **flag_fc, **set_fc, "mode": chosen_mode}
    return _replace(base, fields, "facecloak")


def resolve_map(
    file_cfg: Mapping | None = None,
    sets: Iterable[str] = (),
    *,
    preset: str | None = None,
    explicit: Mapping[str, Any] | None = None,
    default_preset: str = "demo",
) -> MapConfig:
    """The MapConfig of a run: code preset < ``[map]`` of the file < explicit CLI flags <
    ``--set map.*``.

    Args:
      file_cfg, sets: as :func:`resolve_facecloak` (``map.*`` is used here).
      preset: the CLI's ``--preset`` when the user gave it, else None. The base preset is
        ``--set map.preset`` > ``preset`` > the file's ``preset`` > ``default_preset``
        (the CLI's rule: ``"paper"`` with a ``--score-net``, else ``"demo"``).
      explicit: other flags the user gave, in MapConfig field names (``{"steps":
        args.map_steps, "projection": args.projection, "t0": args.t0}``); None values are
        skipped.
    """
    doc = _document(file_cfg)
    file_map = dict(doc["map"])
    set_map = dict(parse_sets(sets)["map"])
    flag_map = _normalize("map", _given(explicit), where="explicit ")
    chosen = _pick("preset", set_map, {"preset": preset} if preset else {}, flag_map, file_map)
    chosen = chosen or default_preset
    for layer in (file_map, flag_map, set_map):
        layer.pop("preset", None)
    if chosen not in map_presets.PRESETS:
        raise ConfigError(
            f"map.preset: expected one of {_choices(map_presets.PRESETS)}, got {_show(chosen)}"
        )
    return _replace(map_presets.PRESETS[chosen], {**file_map, **flag_map, **set_map}, "map")


def protect_options(file_cfg: Mapping | None) -> dict[str, Any]:
    """The ``[protect]`` table: CLI option defaults, keyed by argparse ``dest``.

    Keys must be strings; ``-`` becomes ``_`` (``views-from`` -> ``views_from``). Values are
    passed through as TOML typed them: the CLI checks names, types and choices (see
    :func:`as_argv` for a way to let argparse do it). ``file_cfg`` is :func:`load_config`'s
    result or a raw TOML dict.
    """
    if file_cfg is None:
        return {}
    table = file_cfg.get("protect") or {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"protect must be a table ([protect]), got {_show(table)}")
    return _protect(table)


def as_argv(options: Mapping[str, Any]) -> list[str]:
    """Options (``{"views_from": "group", "quality": 92, "no_masks": True}``) as command-line
    tokens (``["--views-from", "group", "--quality", "92", "--no-masks"]``).

    True gives the bare flag and False leaves it out; arrays are joined with commas; None
    leaves the option out. Placing these tokens *before* the user's own (right after the
    subcommand) lets argparse check them and lets the user's flags win.
    """
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def dump_config(
    *,
    facecloak: CloakConfig | None = None,
    map_config: MapConfig | None = None,
    protect: Mapping[str, Any] | None = None,
    header: str | None = None,
) -> str:
    """A TOML document pinning every field of the given configs (for a run's output folder):
    :func:`load_config` of it then :func:`resolve_facecloak` / :func:`resolve_map` gives the
    same objects back, whatever the code presets say by then.

    Budgets that are whole grey levels are written as ``eps_levels`` etc.; None as ``"none"``.
    ``header`` lines become ``#`` comments at the top.
    """
    lines: list[str] = [f"# {line}".rstrip() for line in (header or "").splitlines()]
    for section, cfg in (("facecloak", facecloak), ("map", map_config)):
        if cfg is None:
            continue
        lines += ["", f"[{section}]"] if lines else [f"[{section}]"]
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if section == "facecloak" and f.name in LEVEL_FIELDS and _whole_levels(value):
                lines.append(f"{f.name}_levels = {round(value * 255)}")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
    if protect:
        lines += ["", "[protect]"] if lines else ["[protect]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in protect.items()]
    return "\n".join(lines) + "\n"


def _whole_levels(value: float) -> bool:
    return (
        math.isfinite(value)
        and value * 255 == round(value * 255)
        and round(value * 255) / 255 == value
    )


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else _toml_value(key)


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # shortest round-trip form; "inf"/"-inf" are TOML too
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return "".join(out) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


# --------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------


class _Mismatch(Exception):
    """A value of the wrong type; ``args[0]`` says what was expected."""


def _key(name: Any) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"keys must be strings, got {name!r}")
    return name.strip().replace("-", "_")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _normalize(
    section: str,
    values: Mapping[str, Any],
    *,
    text: bool = False,
    where: str = "",
    cls: type | None = None,
    selectors: bool = True,
) -> dict[str, Any]:
    """Check ``values`` against ``cls``'s fields (default: the section's class) and return them
    typed, in field names (``*_levels`` converted), with the preset selector if allowed."""
    cls = cls or _CLASSES[section]
    hints = _hints(cls)
    sel = _SELECTORS.get(section, {}) if selectors else {}
    levels = {f"{f}_levels": f for f in LEVEL_FIELDS} if issubclass(cls, CloakConfig) else {}
    known = [*hints, *levels, *sel]
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for raw_key, value in values.items():
        key = _key(raw_key)
        label = f"{where}{section}.{key}"
        if key in sel:
            value = _convert(Literal[sel[key]], value, label, text)  # type: ignore[valid-type]
            field = key
        elif key in levels:
            field = levels[key]
            value = _convert(float, value, label, text) / 255
        elif key in hints:
            field = key
            value = _convert(hints[key], value, label, text)
        else:
            hint = ""
            if key in ("strength", "preset"):
                hint = f" ({key} chooses a base preset: use resolve_facecloak/resolve_map)"
            raise ConfigError(f"{label}: unknown key{_suggest(key, known)}{hint}")
        if field in origin:
            raise ConfigError(
                f"{where}{section}.{origin[field]} and {section}.{key} set the same field: give one"
            )
        origin[field] = key
        out[field] = value
    return out


def _convert(hint: Any, value: Any, label: str, text: bool) -> Any:
    """``value`` as ``hint`` (from a ``--set`` string when ``text``), or ConfigError."""
    raw = value
    if text:
        if not isinstance(value, str):
            raise ConfigError(f"{label}: expected a string to parse, got {_show(value)}")
        value = _from_text(hint, value)
    try:
        return _coerce(hint, value)
    except _Mismatch as e:
        got = _show(raw.strip() if text else raw)
        raise ConfigError(f"{label}: expected {e.args[0]}, got {got}") from None


def _is_stringy(hint: Any) -> bool:
    """Whether ``hint`` is str, a Literal of strings, or an Optional of one."""
    if hint is str:
        return True
    origin = typing.get_origin(hint)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return len(args) == 1 and _is_stringy(args[0])
    return False


def _from_text(hint: Any, text: str) -> Any:
    stripped = text.strip()
    if _is_stringy(hint) and not stripped.startswith(('"', "'")):
        return stripped  # string fields take the text as written (bare "none" -> None later)
    value = parse_set_value(text)
    if isinstance(value, str) and value.lower() in ("true", "false") and _accepts_bool(hint):
        return value.lower() == "true"
    return value


def _accepts_bool(hint: Any) -> bool:
    if hint is bool:
        return True
    if typing.get_origin(hint) in (Union, types.UnionType):
        return bool in typing.get_args(hint)
    return False


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        optional = type(None) in args
        if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(option, value)
            except _Mismatch:
                continue
        names = [_describe(a) for a in options] + (['"none"'] if optional else [])
        if options == [bool]:
            names = ["true", "false", *names[1:]]
        raise _Mismatch(", ".join(names[:-1]) + " or " + names[-1])
    if origin is Literal:
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return choice
        raise _Mismatch(_describe(hint))
    if origin is tuple or hint is tuple:
        if isinstance(value, str):
            items: list = [s.strip() for s in value.split(",") if s.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise _Mismatch(_describe(hint))
        if not args:
            return tuple(items)
        if len(args) == 2 and args[1] is Ellipsis:
            elems = [args[0]] * len(items)
        elif len(args) == len(items):
            elems = list(args)
        else:
            raise _Mismatch(_describe(hint))
        try:
            return tuple(_coerce(e, v) for e, v in zip(elems, items, strict=True))
        except _Mismatch:
            raise _Mismatch(_describe(hint)) from None
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is Any:
        return value
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:  # an annotation this module does not know: leave the check to the dataclass
        return value
    raise _Mismatch(_describe(hint))


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return "one of " + _choices(args)
    if origin is tuple or hint is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_PLURALS.get(args[0], _describe(args[0]))}"
        return f"a list of {len(args)} items" if args else "a list"
    if hint in _NAMES:
        return _NAMES[hint]
    return getattr(hint, "__name__", str(hint))


def _choices(choices: Iterable[Any]) -> str:
    return ", ".join(repr(c) for c in choices)


def _show(value: Any) -> str:
    """A value as the user wrote it (TOML-like): 'abc', 3.5, true, none, [1, 2]."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "a table"
    return repr(value)


def _suggest(key: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "; known: " + ", ".join(known)


def _given(explicit: Mapping[str, Any] | None, *skip: str) -> dict[str, Any]:
    return {k: v for k, v in (explicit or {}).items() if v is not None and k not in skip}


def _pick(key: str, *layers: Mapping[str, Any]) -> Any:
    """The first layer's value of ``key`` (layers given highest precedence first)."""
    for layer in layers:
        if key in layer:
            return layer[key]
    return None


def _replace(config: T, fields: Mapping[str, Any], section: str) -> T:
    try:
        return dataclasses.replace(config, **fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{section}: {e}") from None


def _protect(table: Mapping, where: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"{where}protect: keys must be strings, got {raw_key!r}")
        key = _key(raw_key)
        if key in out:
            raise ConfigError(f"{where}protect.{raw_key}: given twice (- and _ are the same)")
        out[key] = value
    return out
