"""Dataclass configs: every field a command-line flag, presets, and the resolved config on disk.

A config is a (possibly nested) dataclass whose defaults are the paper's values. `parse_config`
turns it into a command line:

    --steps 100000  --model.deter 200  --model.free_nats 3  (or --model.free-nats 3)
    --size 64 64    --dataset_id none  --verbose  /  --verbose false
    --preset smoke  (named overrides, applied before the flags)
    --resume        (continue the run in --logdir with its saved config.json)

Precedence: dataclass defaults < preset < flags. On `--resume` the saved config replaces the
defaults, and only the preset and flags given on this command line change it (a larger budget,
say), so a resumed run keeps the settings it started with.

Why argparse and not tyro: the presets and config.json need the typed coercion below whatever
parses the command line, and the flags' contract (`1e6` for an int, `none` for `str | None`,
`--verbose false`, both `--a-b` and `--a_b`, a tuple's length named in the error, one-line errors)
differs from tyro's defaults at every point. Built on tyro 1.0, this command line took about 290
lines of adapters (and a hook tyro marks private) against the ~95 of `build_parser` and
`parse_config` here.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import functools
import inspect
import io
import json
import math
import operator
import os
import re
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

C = TypeVar("C")
CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """A config value, preset or saved config that does not fit the config's dataclass."""


# -- the field tree ---------------------------------------------------------------------------


def flat_fields(cls: type, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Map each leaf field's dotted path ("model.deter") to (its type, its dataclass field)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        path, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(flat_fields(tp, path + "."))
        else:
            out[path] = (tp, f)
    return out


def to_dict(cfg) -> dict:
    """The config as a JSON-ready nested dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def get_path(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def apply_overrides(cfg: C, overrides: Mapping[str, Any], source: str = "override") -> C:
    """Set dotted paths to values, each checked and coerced to its field's type.

    Args:
        overrides: {"model.deter": 200, ...}; values may be strings (as typed on a command line)
            or already typed (as in presets and JSON).
        source: named in errors ("preset 'smoke'", "config.json").
    """
    fields = flat_fields(type(cfg))
    values = {path: get_path(cfg, path) for path in fields}
    for path, value in overrides.items():
        if path not in fields:
            raise ConfigError(f"{source}: unknown config field {path!r}; {_closest(path, fields)}")
        tp = fields[path][0]
        try:
            values[path] = parse_value(value, tp) if isinstance(value, str) else coerce(value, tp)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: field {path!r} ({type_name(tp)}): {exc}") from exc
    # Built once from all values, so that a dataclass's own checks (__post_init__) see the
    # overrides together: `cem.candidates 50` with `cem.top_k 5` is valid in either order.
    try:
        return _build(type(cfg), values)
    except (TypeError, ValueError) as exc:
        changed = ", ".join(overrides) or "defaults"
        raise ConfigError(f"{source}: invalid config after setting {changed}: {exc}") from exc


def at_least(cfg, minimum: int, *names: str) -> None:
    """Raise ValueError naming each field of `names` below `minimum`: for a config's budgets and
    sizes in its `__post_init__`, where a bad value would otherwise be a silent no-op (a
    negative budget) or a crash minutes into a run (a batch of 0)."""
    bad = [f"{n} = {getattr(cfg, n)}" for n in names if getattr(cfg, n) < minimum]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be at least {minimum}")


def _build(cls: type[C], values: Mapping[str, Any], prefix: str = "") -> C:
    """Construct `cls` (nested dataclasses included) from dotted-path leaf values."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path, tp = prefix + f.name, hints[f.name]
        nested = dataclasses.is_dataclass(tp)
        kwargs[f.name] = _build(tp, values, path + ".") if nested else values[path]
    return cls(**kwargs)


def from_dict(cls: type[C], data: Mapping, source: str = "config") -> C:
    """Rebuild a config from `to_dict`'s output; fields it lacks keep their defaults."""
    flat = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, prefix + k + ".")
            else:
                flat[prefix + k] = v

    walk(data, "")
    return apply_overrides(cls(), flat, source=source)


# -- values -----------------------------------------------------------------------------------


def _split_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else functools.reduce(operator.or_, args)), True
    return tp, False


def type_name(tp) -> str:
    inner, optional = _split_optional(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        name = "|".join(map(str, typing.get_args(inner)))
    elif origin in (tuple, list):
        args = ("..." if a is Ellipsis else type_name(a) for a in typing.get_args(inner))
        name = f"{origin.__name__}[{', '.join(args)}]"
    else:
        name = getattr(inner, "__name__", str(inner))
    return name + (" or none" if optional else "")


def parse_value(text: str, tp):
    """Parse one command-line string as `tp` (int, float, str, bool, Literal, X | None, tuple)."""
    inner, optional = _split_optional(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    origin = typing.get_origin(inner)
    if origin in (tuple, list):
        parts = [p for p in text.replace(",", " ").split() if p]
        return coerce(parts, inner)
    if inner is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if inner is int:
        try:
            return int(text)
        except ValueError:
            try:  # "1e6" is a common way to write a step budget
                number = float(text)
            except ValueError:
                number = math.nan
            if not number.is_integer():
                raise ValueError(f"expected an integer, got {text!r}") from None
            return int(number)
    if inner is float:
        return float(text)
    if origin is Literal:
        for choice in typing.get_args(inner):
            if str(choice) == text:
                return choice
        raise ValueError(f"expected one of {list(typing.get_args(inner))}, got {text!r}")
    if inner is str or inner is Any:
        return text
    raise TypeError(f"cannot parse a {type_name(tp)} from the command line")


def coerce(value, tp):
    """Check an already-typed value (a preset's, or JSON's) against `tp`, converting lists to
    tuples and ints to floats where the field asks for them."""
    inner, optional = _split_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise ValueError("none is not allowed here")
    origin = typing.get_origin(inner)
    if origin in (tuple, list):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ValueError(f"expected a sequence, got {value!r}")
        args = typing.get_args(inner)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"expected {len(args)} values, got {len(value)}")
            elems = args
        else:
            elems = [args[0] if args else Any] * len(value)
        items = [parse_value(v, t) if isinstance(v, str) else coerce(v, t)
                 for v, t in zip(value, elems, strict=True)]  # fmt: skip
        return tuple(items) if origin is tuple else items
    if inner is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if origin is Literal:
        if value not in typing.get_args(inner):
            raise ValueError(f"expected one of {list(typing.get_args(inner))}, got {value!r}")
        return value
    if inner is str and not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _closest(path: str, fields) -> str:
    close = difflib.get_close_matches(path, list(fields), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else f"fields: {', '.join(fields)}"


# -- the command line -------------------------------------------------------------------------


def field_comments(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted path -> the comment after the field in the dataclass source (`x: int = 3  # ...`),
    so that a config documents its fields once, where they are defined, and --help shows it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        source = ""
    found, last = {}, None
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        more = re.match(r"\s+#\s*(.+)$", line)
        if match:
            last = prefix + match[1]
            found[last] = match[2].strip()
        elif more and last and not found[last].endswith("."):  # the comment goes on below
            found[last] += " " + more[1].strip()
        else:
            last = None
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found.update(field_comments(hints[f.name], prefix + f.name + "."))
    return found


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage of a config with a hundred flags would
    bury the message): `<prog>: error: <message> (see --help)`, exit code 2."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):  # did you mean ...?
            flags = [s for a in self._actions for s in a.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], flags, n=3, cutoff=0.6)
                if word.startswith("--") and close:
                    message += f"; for {word} did you mean {' or '.join(close)}?"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(cls: type, presets: Mapping[str, Mapping] | None, description: str | None):
    """An argparse parser with `--preset`, `--resume` and one flag per leaf field."""
    parser = _Parser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only what the user typed reaches the namespace
    )
    run = parser.add_argument_group("run")
    if presets:
        run.add_argument("--preset", choices=sorted(presets),
                         help="named overrides applied before the flags below")  # fmt: skip
    run.add_argument(
        "--resume", action="store_true",
        help="continue the run in --logdir from its checkpoint and saved config",
    )  # fmt: skip
    fields = parser.add_argument_group("config (default in brackets)")
    defaults, comments = cls(), field_comments(cls)
    for path, (tp, f) in flat_fields(cls).items():
        names = ([f"--{path.replace('_', '-')}"] if "_" in path else []) + [f"--{path}"]
        inner, _ = _split_optional(tp)
        kwargs: dict[str, Any] = {"dest": path, "metavar": type_name(tp).upper()}
        if inner is bool:
            kwargs.update(nargs="?", const="true")
        elif typing.get_origin(inner) in (tuple, list):
            items = {a for a in typing.get_args(inner) if a is not Ellipsis}
            item = type_name(items.pop()) if len(items) == 1 else "value"
            kwargs.update(nargs="+", metavar=item.upper())  # --stages STR [STR ...]
        helptext = f.metadata.get("help", comments.get(path, ""))
        default = get_path(defaults, path)
        shown = "none" if default is None else json.dumps(default)
        kwargs["help"] = f"{helptext} [{shown}]".strip().replace("%", "%%")
        fields.add_argument(*names, **kwargs)
    return parser


def parse_config(
    cls: type[C],
    presets: Mapping[str, Mapping] | None = None,
    argv: Sequence[str] | None = None,
    description: str | None = None,
) -> tuple[C, bool]:
    """Parse a command line into a config.

    Args:
        cls: the config dataclass; it must have a `logdir` field for `--resume`.
        presets: {name: {"dotted.path": value}}; `--preset NAME` applies one.
        argv: the arguments (default: sys.argv[1:]).
        description: the script's --help text.
    Returns:
        (config, resume). On resume the config is the run's saved one with this command line's
        preset and flags applied on top.
    """
    parser = build_parser(cls, presets, description)
    args = vars(parser.parse_args(argv))
    resume = bool(args.pop("resume", False))
    preset = args.pop("preset", None) if presets else None  # else a field named preset
    # A list flag (nargs="+") arrives as a list of strings; join it for parse_value.
    flags = {k: " ".join(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        if resume:
            logdir = flags.get("logdir", getattr(cls(), "logdir", None))
            if logdir is None:
                raise ConfigError(f"{cls.__name__} has no logdir field, so it cannot --resume")
            cfg = load_config(cls, logdir)
        else:
            cfg = cls()
        if preset is not None:
            cfg = apply_overrides(cfg, presets[preset], source=f"preset {preset!r}")
        cfg = apply_overrides(cfg, flags, source="command line")
    except ConfigError as exc:
        parser.error(str(exc))
    return cfg, resume


def save_config(cfg, run_dir: str | Path) -> Path:
    """Write the resolved config to `run_dir/config.json` (atomically); returns the path."""
    path = Path(run_dir) / CONFIG_FILE
    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")
    return path


def load_config(cls: type[C], run_dir: str | Path) -> C:
    """Read `run_dir/config.json` back into `cls`."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} in {run_dir}: nothing to resume there; check --logdir, or start "
            "a new run without --resume"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); restore or delete it") from exc
    return from_dict(cls, data, source=str(path))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    atomic_write_bytes(path, text.encode())


def atomic_write_csv(path: str | Path, rows: list[dict], fieldnames: list[str]) -> None:
    """Write `rows` (dicts keyed by `fieldnames`) as CSV with a header, atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
