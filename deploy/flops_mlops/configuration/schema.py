"""How a setting is declared: every section of the configuration is a strict, closed, immutable ``Model``
whose fields carry their user-facing description (``doc``); a broken rule is a ``ConfigError`` naming the file,
key and expectation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError, PydanticUndefined

from .values import RULE_ERROR


class ConfigError(Exception):
    """A configuration problem the user must fix; the message names the file, key and expectation."""


class Broken(ConfigError):
    """A rule that spans several keys is broken; ``load`` puts the file name in front."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


class Model(BaseModel):
    """Strict, closed and immutable: what every section of the configuration is."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def doc(text: str, default: Any = PydanticUndefined) -> Any:
    """A field with its user-facing description (and its default; none: the key is required)."""
    return Field(default, description=text)



def rule(message: str) -> PydanticCustomError:
    """A broken constraint of a value, reported as ``key: message``."""
    return PydanticCustomError(RULE_ERROR, message)
