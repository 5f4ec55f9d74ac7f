"""Durations as users write them: ``90s``, ``20m``, ``2h``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh])")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``text``: a number (seconds) or parts such as ``90s``, ``20m``, ``2h``, ``1h30m``.

    Raises:
        ValueError: not a positive duration in that form.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        spec = str(text).strip().lower().replace(" ", "")
        try:
            seconds = float(spec)
        except ValueError:
            parts = _PART.findall(spec)
            if not parts or "".join(f"{n}{u}" for n, u in parts) != spec:
                raise ValueError(f"{text!r} is not a duration; write e.g. 90s, 20m, 2h or 1h30m") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form of ``seconds``: ``45 s``, ``20 min``, ``1 h 30 min``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 600 and seconds % 60:
        return f"{seconds / 60:.1f} min"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min".replace(" 0 min", "")
