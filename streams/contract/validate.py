"""Strict field checks whose errors name the field path and the reason.

Every check raises :class:`InvalidEvent` and nothing else, so a consumer can route any
malformed message to the dead-letter topic with a precise reason.

Examples
--------
>>> try:
...     req_int({"pos": "x"}, "pos", "candidates[3]")
... except InvalidEvent as e:
...     print(e.reason)
candidates[3].pos: expected int, got str
"""

from __future__ import annotations

from typing import Any

#: the fixed set of dead-letter kinds (``reason_kind`` of a DLQ record and of ``hap_streams_invalid_total``)
REASON_KINDS = ("json", "schema", "oversized", "future", "misrouted", "late", "orphan", "oversized_request",
                "undecodable", "internal")
#: how far ahead of its arrival an event time may be (the worker's default bound, and the producer SDK's)
MAX_FUTURE_MS = 10_000
#: kinds whose reason names no field (``json: ...``, ``oversized: ...``)
_NO_FIELD_KINDS = ("json", "oversized", "misrouted", "oversized_request", "undecodable", "internal")


class InvalidEvent(ValueError):
    """A message that violates its contract; ``reason`` names the field path, ``kind`` is one of
    :data:`REASON_KINDS` (``schema`` unless said otherwise), ``field`` is the path alone.

    >>> e = InvalidEvent("candidates[3].item_id: expected string, got int")
    >>> e.field, e.kind
    ('candidates[3].item_id', 'schema')
    >>> InvalidEvent("json: unexpected character", "json").field is None
    True
    """

    def __init__(self, reason: str, kind: str = "schema") -> None:
        if kind not in REASON_KINDS:
            raise ValueError(f"reason kind {kind!r} is not one of {REASON_KINDS}")
        super().__init__(reason)
        self.reason = reason
        self.kind = kind

    @property
    def field(self) -> str | None:
        """The field path the reason starts with (``message`` for the whole record); None when the
        reason names no field (invalid JSON, an oversized record)."""
        if self.kind in _NO_FIELD_KINDS:
            return None
        path, sep, _ = self.reason.partition(": ")
        return path if sep and " " not in path else None


def check_not_future(ts_ms: int, arrival_ms: int, max_future_ms: int) -> None:
    """Reject an event time more than ``max_future_ms`` ahead of its arrival (kind ``future``).

    A clock running ahead, or microseconds sent as milliseconds, would otherwise raise its
    partition's watermark and close every other request's window early.

    >>> check_not_future(1_000, 0, 1_000)
    >>> try:
    ...     check_not_future(36_000, 1_000, 10_000)
    ... except InvalidEvent as e:
    ...     print(e.kind, e.reason)
    future ts_ms: 36000 is 35000 ms ahead of its arrival at 1000 (bound 10000 ms)
    """
    if ts_ms - arrival_ms > max_future_ms:
        raise InvalidEvent(f"ts_ms: {ts_ms} is {ts_ms - arrival_ms} ms ahead of its arrival at {arrival_ms} "
                           f"(bound {max_future_ms} ms)", "future")


def _path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def req_mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidEvent(f"{path or 'message'}: expected object, got {type(value).__name__}")
    return value


def req_str(obj: dict[str, Any], key: str, prefix: str = "", max_len: int = 256) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidEvent(f"{_path(prefix, key)}: expected string, got {type(value).__name__}")
    if not value or len(value) > max_len:
        raise InvalidEvent(f"{_path(prefix, key)}: expected 1..{max_len} characters, got {len(value)}")
    return value


def req_int(obj: dict[str, Any], key: str, prefix: str = "", minimum: int | None = None) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(f"{_path(prefix, key)}: expected int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise InvalidEvent(f"{_path(prefix, key)}: expected int >= {minimum}, got {value}")
    return value


def opt_int(obj: dict[str, Any], key: str, prefix: str = "", minimum: int | None = None) -> int | None:
    return None if obj.get(key) is None else req_int(obj, key, prefix, minimum)


def opt_float(obj: dict[str, Any], key: str, prefix: str = "") -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidEvent(f"{_path(prefix, key)}: expected finite number, got {type(value).__name__}")
    if abs(value) == float("inf"):
        raise InvalidEvent(f"{_path(prefix, key)}: expected finite number, got {value}")
    return float(value)


def opt_bool(obj: dict[str, Any], key: str, prefix: str = "") -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise InvalidEvent(f"{_path(prefix, key)}: expected bool, got {type(value).__name__}")
    return value


def req_list(obj: dict[str, Any], key: str, prefix: str = "", max_len: int = 5000) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise InvalidEvent(f"{_path(prefix, key)}: expected list, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidEvent(f"{_path(prefix, key)}: {len(value)} entries exceed the cap of {max_len}")
    return value


def features(obj: dict[str, Any], key: str, prefix: str = "", max_len: int = 256) -> dict[str, float]:
    """An optional ``{name: number}`` map."""
    value = obj.get(key)
    if value is None:
        return {}
    path = _path(prefix, key)
    mapping = req_mapping(value, path)
    if len(mapping) > max_len:
        raise InvalidEvent(f"{path}: {len(mapping)} entries exceed the cap of {max_len}")
    return {name: opt_float(mapping, name, path) for name in mapping}  # type: ignore[misc]


def user_features(obj: dict[str, Any], key: str, max_history: int) -> dict[str, Any]:
    """Optional user features: numbers plus an optional ``history`` list of item ids."""
    value = obj.get(key)
    if value is None:
        return {}
    mapping = req_mapping(value, key)
    out: dict[str, Any] = {}
    for name in mapping:
        if name == "history":
            history = req_list(mapping, "history", key, max_history)
            for i, item_id in enumerate(history):
                if not isinstance(item_id, str) or not item_id or len(item_id) > 256:
                    raise InvalidEvent(f"{key}.history[{i}]: expected non-empty string")
            out["history"] = list(history)
        else:
            out[name] = opt_float(mapping, name, key)
    return out
