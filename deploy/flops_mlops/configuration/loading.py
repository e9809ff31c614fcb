"""Reading a configuration file: YAML (a key written twice is an error), then the model; every problem is
reported as ``file: key: what is expected``. Relative paths in the file are resolved against its folder."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError

from .schema import Broken, ConfigError
from .stack import StackConfig
from .values import RULE_ERROR


class DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (YAML lets the last one win
    silently, so a typo could undo a setting without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKey(f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                                   f"{key_node.start_mark.line + 1}); remove one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load(path: str | Path) -> StackConfig:
    """Read and check a configuration file; raise ConfigError naming the file and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") \
            from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        config = StackConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {explain(first(exc))}") from None
    except Broken as exc:
        raise ConfigError(f"{path}: {exc}") from None
    update = {"state_dir": _resolve(path, config.state_dir), "secrets_file": _resolve(path, config.secrets_file)}
    t = config.tracking
    own = {key: _resolve(path, value) for key in ("tls_certificate", "tls_key", "tls_ca")
           if (value := getattr(t, key)) is not None}
    if own:
        update["tracking"] = t.model_copy(update=own)
    return config.model_copy(update=update).located(path)


def _resolve(config_path: Path, value: Path) -> Path:
    return value if value.is_absolute() else (config_path.parent / value).resolve()


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def key_path(loc: tuple) -> str:
    """('tenants', 1, 'id') -> 'tenants[1].id'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def walk(loc: tuple) -> tuple[Any, Any]:
    """(type at ``loc``, field named by its last key): what a value at that place of the file is read into."""
    current: Any = StackConfig
    field = None
    for part in loc:
        kind = unwrap(current)
        if isinstance(part, int):
            current = typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
        elif isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            field = kind.model_fields[part]
            current = field.annotation
        else:
            return None, None
    return current, field


def unwrap(annotation: Any) -> Any:
    """The type inside Optional[...] and Annotated[...]."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (typing.Union, type(int | None)):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def first(exc: ValidationError) -> dict:
    """The error to report: an unknown key first (it is often the misspelt name of a key reported missing)."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def explain(error: dict) -> str:
    """One pydantic error as ``key: what is wrong / expected``, the form every configuration message has."""
    loc = tuple(error["loc"])
    key = key_path(loc) or "(top level)"
    kind, value = error["type"], error.get("input")
    if kind == RULE_ERROR:
        return f"{key}: {error['msg']}"
    if kind == "extra_forbidden":
        model = unwrap(walk(loc[:-1])[0])
        known = ", ".join(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else "?"
        return f"{key}: unknown key (expected one of: {known})"
    if kind == "missing":
        field = walk(loc)[1]
        return f"{key}: required key is missing ({field.description if field else 'required'})"
    if kind == "literal_error":
        field = walk(loc)[1]
        choices = typing.get_args(unwrap(field.annotation)) if field else ()
        return f"{key}: expected one of {', '.join(map(str, choices))}, got {_show(value)}"
    expected = {"int_type": "an integer", "bool_type": "true or false", "string_type": "a non-empty string",
                "string_too_short": "a non-empty string", "list_type": "a list", "model_type": "a mapping",
                "dict_type": "a mapping", "is_instance_of": "a path", "path_type": "a path"}.get(kind)
    if expected:
        return f"{key}: expected {expected}, got {_show(value)}"
    return f"{key}: {error['msg']}, got {_show(value)}"  # a check without a message of ours (a bug to fix here)


