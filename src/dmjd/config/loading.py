"""Load a run's configuration: schema defaults < YAML preset < dotted ``key=value`` overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dmjd.config.schema import Config


class ConfigError(ValueError):
    """A configuration problem, reported as one line per offending key."""


def available_presets() -> list[str]:
    """Names of the presets shipped in ``dmjd/config/presets``."""
    folder = resources.files("dmjd.config") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_preset(preset: str | Path) -> dict[str, Any]:
    """Read a preset by name (shipped) or by path to a YAML file."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
    else:
        file = resources.files("dmjd.config") / "presets" / f"{preset}.yaml"
        if not file.is_file():
            raise ConfigError(
                f"unknown preset {preset!r}; available: {', '.join(available_presets())} "
                "(or give a path to a .yaml file)"
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
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
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
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"{key}: {msg}{got}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a plain dict (e.g. a checkpoint's saved config) into a Config."""
    try:
        return Config.model_validate(data)
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


def config_to_yaml(cfg: Config) -> str:
    """The full resolved config as YAML (written next to every run)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
