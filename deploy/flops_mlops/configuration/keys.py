"""Every key of the configuration with its default and description: `flops-mlops config keys` and
docs/configuration.md, generated from the model's declarations."""

from __future__ import annotations

import json
import typing

from pydantic import BaseModel

from .loading import unwrap, walk
from .stack import StackConfig


def describe(cls: type[BaseModel] = StackConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every setting, for `flops-mlops config keys` and docs/configuration.md."""
    rows = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        inner = unwrap(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            rows.append((key, "", field.description))
            rows.extend(describe(inner, key + "."))
            continue
        if typing.get_origin(inner) is list:
            item = unwrap(typing.get_args(inner)[0])
            if isinstance(item, type) and issubclass(item, BaseModel):
                rows.append((key, "", field.description))
                rows.extend(describe(item, key + "[]."))
                continue
        rows.append((key, "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True)),
                     field.description))
    return rows


MARKDOWN_HEAD = """\
<!-- Generated from the configuration model (deploy/flops_mlops/configuration/); do not edit by hand. Regenerate with
     .venv/bin/flops-mlops config keys --markdown > docs/configuration.md
     tests/unit/test_config.py fails when this file differs from what the model generates. -->

# Configuration keys

Every key of a stack configuration (`configs/*.yaml`), its default and its meaning, as `flops-mlops config keys`
prints them. Relative paths are resolved against the configuration file's folder. Values are checked strictly when
the file is loaded (`flops-mlops --config FILE config check`): unknown keys are refused, a number is never read from
a string (nor true from 1), and every rule of every target holds, the `oakestra` section's included (they apply
when the file has that section). A problem is reported with the file, key and expectation (exit 2), for example
`configs/local.yaml: tracking.base_port: expected an integer, got str 'abc'`.

| key | default | meaning |
| --- | --- | --- |
"""


def markdown() -> str:
    """docs/configuration.md: every key with its default (as YAML) and its description."""
    rows = [f"| `{key}` | {_yaml_default(key)} | {text} |" for key, _, text in describe()]
    return MARKDOWN_HEAD + "\n".join(rows) + "\n"


def _yaml_default(key: str) -> str:
    """(required), or the default in YAML (flow style), of the setting ``key``; empty for most sections."""
    current, field = walk(tuple(0 if part == "[]" else part for part in key.replace("[]", ".[]").split(".")))
    inner = unwrap(current)
    if typing.get_origin(inner) is list:
        inner = unwrap(typing.get_args(inner)[0])
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        required = any(f.is_required() for f in inner.model_fields.values())
        # A section whose keys are all required when it is written: its default as a whole.
        return f"`{json.dumps(default.model_dump())}`" if required and isinstance(default, BaseModel) else ""
    if field.is_required():
        return "(required)"
    return f"`{json.dumps(field.get_default(call_default_factory=True))}`"
