"""Load a run's configuration: schema defaults < YAML preset < dotted ``key=value`` overrides."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from dmjd.config.schema import Config
from dmjd.errors import InputError


class ConfigError(InputError):
    """A configuration problem, reported as one line per offending key."""


def available_presets() -> list[str]:
    """Names of the presets shipped in ``dmjd/config/presets``."""
    folder = resources.files("dmjd.config") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def looks_like_path(value: str | Path) -> bool:
    """A ``--config`` value names a file when it holds a ``/`` or ends in ``.yaml`` / ``.yml``;
    anything else names a preset (so a folder called ``demo`` does not shadow the preset)."""
    text = str(value)
    return isinstance(value, Path) or "/" in text or os.sep in text or text.endswith((".yaml", ".yml"))


def read_preset(preset: str | Path) -> dict[str, Any]:
    """Read a preset by name (shipped) or a YAML file by path (see ``looks_like_path``).

    Raises:
        ConfigError: a missing file, an unknown preset, or YAML that is not a mapping.
    """
    if looks_like_path(preset):
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
    else:
        file = resources.files("dmjd.config") / "presets" / f"{preset}.yaml"
        if not file.is_file():
            hint = f"; for the file {preset}, write ./{preset}" if Path(preset).is_file() else ""
            raise ConfigError(
                f"unknown preset {preset!r}; available: {', '.join(available_presets())} (or give a path to a .yaml file){hint}"
            )
        text = file.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {preset} must be a mapping of sections, got {type(data).__name__}")
    return data


def _allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The keys allowed at a dotted path of the schema (for error messages)."""
    for part in path:
        field = model.model_fields.get(part)
        section = _section_of(field.annotation) if field is not None else None
        if section is None:
            return []
        model = section
    return list(model.model_fields)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a YAML-typed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def check_override_keys(overrides: list[str]) -> None:
    """Refuse malformed overrides and unknown keys, without validating values: what any config,
    a resumed run's saved one included, refuses (so it can run before a checkpoint is read).

    Raises:
        ConfigError: the first malformed override or unknown key, worded as ``load_config`` words it.
    """
    for item in overrides:
        path, _ = parse_override(item)
        model: type[BaseModel] = Config
        for depth, part in enumerate(path):
            field = model.model_fields.get(part)
            if field is None:
                allowed = ", ".join(model.model_fields)
                raise ConfigError(f"unknown key {'.'.join(path[: depth + 1])!r}; allowed keys here: {allowed}")
            section = _section_of(field.annotation)
            if section is None:
                if depth < len(path) - 1 and get_origin(field.annotation) is not dict:  # a mapping takes any key
                    raise ConfigError(f"cannot set {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
                break
            model = section


def _section_of(annotation: Any) -> type[BaseModel] | None:
    """The schema section a field holds (also an optional one, ``Section | None``), or None for a value."""
    return next((t for t in (annotation, *get_args(annotation)) if isinstance(t, type) and issubclass(t, BaseModel)), None)


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` inside nested dicts, creating sections as needed."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: the dotted key, what is wrong, and what is allowed."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "config"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(Config, loc[:-1])
            lines.append(f"unknown key {key!r}; allowed keys here: {', '.join(allowed)}")
        else:  # a validator may report several problems, one per line of its message
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines += [f"{key}: {problem}{got}" for problem in msg.splitlines()]
    return "\n".join(lines)


def resolve_data_path(data: dict[str, Any]) -> dict[str, Any]:
    """A ``data.path`` given with ``data.name: embedded`` (the demo's) names what to use: the kind
    is inferred from what the folder holds (``dmjd.data.infer_data_kind``) instead of being ignored.

    Raises:
        DataError: the path holds nothing dmjd can read.
    """
    section = data.get("data")
    if not isinstance(section, dict) or not section.get("path") or section.get("name", "embedded") != "embedded":
        return data
    from dmjd.data.datasets import infer_data_kind  # local: loads torch

    name, path = infer_data_kind(str(section["path"]))
    return {**data, "data": {**section, "name": name, "path": path}}


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a plain dict (e.g. a checkpoint's saved config) into a Config.

    Raises:
        ConfigError: invalid keys or values, one line per problem.
        DataError: a ``data.path`` with ``data.name: embedded`` that holds nothing readable.
    """
    try:
        return Config.model_validate(resolve_data_path(data))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build and validate a config from an optional preset and ``key=value`` overrides.

    Raises:
        ConfigError: unknown preset or key, malformed override, or invalid value; the message
            names each offending key and what is allowed.
    """
    data: dict[str, Any] = read_preset(preset) if preset is not None else {}
    for item in overrides or []:
        path, value = parse_override(item)
        apply_override(data, path, value)
    return config_from_dict(data)


def dotted_items(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys: ``{"optim": {"epochs": 3}}`` -> ``{"optim.epochs": 3}``."""
    items: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            items.update(dotted_items(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def config_to_yaml(cfg: Config) -> str:
    """The full resolved config as YAML (written next to every run)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
