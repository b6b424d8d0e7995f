"""Why a message cannot be serialized: the checks behind ``InvalidMessage``'s text.

Owns the description of what each built-in format can represent
(:data:`JSON_RULES`, :data:`MSGPACK_RULES`), :func:`find_problem`, which
walks a message to name the first value a format cannot hold (its path and
type, an out-of-range int, a bad map key, a circular reference), and the
msgpack map-key check :func:`has_bad_map_key` that
:class:`~anyio_layer.messages.serializers.MsgPackSerializer` runs on every
message (msgpack encodes keys its decoders, channels_redis's included, then
refuse).

It must not encode, decode or raise: it only inspects a message and returns
a description (or a bool); the serializers decide what to raise. Apart from
:func:`has_bad_map_key` it runs only after serialization has failed, so it
favours clear messages over speed. Covered by ``tests/test_serializers.py``.
"""

from __future__ import annotations

__all__ = [
    "JSON_RULES",
    "MSGPACK_RULES",
    "Rules",
    "describe_error",
    "find_problem",
    "has_bad_map_key",
    "type_name",
]


def type_name(value: object) -> str:
    """The name of ``value``'s type, qualified by its module unless it is a builtin."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_error(error: BaseException) -> str:
    """``"ExceptionType: text"``, or just the type when the text is empty."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Rules:
    """What a format can represent, to pinpoint why serialization failed."""

    def __init__(
        self,
        allowed: str,
        allowed_keys: str,
        scalars: tuple[type, ...],
        key_types: tuple[type, ...],
        int_range: tuple[int, int] | None = None,
    ) -> None:
        self.allowed = allowed
        self.allowed_keys = allowed_keys
        self.scalars = scalars
        self.key_types = key_types
        self.int_range = int_range


def find_problem(message: object, rules: Rules) -> str | None:
    """Describe the first value in ``message`` that ``rules`` cannot represent, if any.

    Iterative depth-first walk (so it works on any depth), with cycle
    detection; used only after serialization has failed, or for the msgpack
    map-key check after packing succeeded.
    """
    # Each entry: (value, path, ids of the containers enclosing it).
    stack: list[tuple[object, str, frozenset[int]]] = [(message, "message", frozenset())]
    while stack:
        value, path, enclosing = stack.pop()
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if rules.int_range is not None and not (
                rules.int_range[0] <= value <= rules.int_range[1]
            ):
                return f"{path} is an int outside the 64-bit range the format can encode"
            continue
        if isinstance(value, (dict, list, tuple)):
            if id(value) in enclosing:
                return f"{path} contains itself (a circular reference)"
            inner = enclosing | {id(value)}
            children: list[tuple[object, str, frozenset[int]]] = []
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, rules.key_types):
                        return (
                            f"{path} has a key {key!r} of type {type_name(key)}; "
                            f"keys must be {rules.allowed_keys}"
                        )
                    children.append((item, f"{path}[{key!r}]", inner))
            else:
                children.extend(
                    (item, f"{path}[{index}]", inner) for index, item in enumerate(value)
                )
            stack.extend(reversed(children))
            continue
        if not isinstance(value, rules.scalars):
            return f"{path} is of type {type_name(value)}; allowed: {rules.allowed}"
    return None


#: What ``json.dumps`` with default options can encode.
JSON_RULES = Rules(
    allowed="None, bool, int, float, str, list, tuple, dict",
    allowed_keys="str, int, float, bool or None",
    scalars=(str, int, float),
    key_types=(str, int, float, bool, type(None)),
)

_MSGPACK_ALLOWED = "None, bool, int (64-bit), float, str, bytes, bytearray, list, tuple, dict"
#: What ``msgpack.packb`` with default options can encode and ``msgpack.unpackb`` decode.
MSGPACK_RULES = Rules(
    allowed=_MSGPACK_ALLOWED,
    allowed_keys="str or bytes (msgpack decoders, channels_redis' included, refuse others)",
    scalars=(str, bytes, bytearray, memoryview, float),
    key_types=(str, bytes),
    int_range=(-(2**63), 2**64 - 1),
)


_CONTAINERS = (dict, list, tuple)
_MSGPACK_KEYS = (str, bytes)


def _has_bad_map_key_recursive(value: object) -> bool:
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, _MSGPACK_KEYS):
                return True
            if isinstance(item, _CONTAINERS) and _has_bad_map_key_recursive(item):
                return True
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, _CONTAINERS) and _has_bad_map_key_recursive(item):
                return True
    return False


def has_bad_map_key(message: object) -> bool:
    """Whether any dict in ``message`` has a key that is not ``str`` or ``bytes``.

    Runs on every msgpack serialization, so the common case is a fast
    recursive walk. Only called on data ``msgpack.packb`` accepted, so it is
    acyclic and at most about 1024 levels deep; the iterative
    :func:`find_problem` takes over if that exceeds Python's recursion limit.
    """
    try:
        return _has_bad_map_key_recursive(message)
    except RecursionError:
        return find_problem(message, MSGPACK_RULES) is not None
