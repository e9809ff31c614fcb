"""The platforms our images are built for, and the `--platform` option that names them."""

from __future__ import annotations

from dataclasses import dataclass

from ..configuration.schema import ConfigError


@dataclass(frozen=True)
class Platform:
    name: str  # linux/arm64, as OCI and Docker write it
    debian: str  # Debian's architecture (mmdebstrap --arch)
    machine: str  # uname -m, and the manylinux wheel tags' suffix

    @property
    def architecture(self) -> str:
        return self.name.split("/")[1]


PLATFORMS = {p.name: p for p in (Platform("linux/amd64", "amd64", "x86_64"),
                                 Platform("linux/arm64", "arm64", "aarch64"))}
DEFAULT = "linux/amd64,linux/arm64"


def add_platform_argument(parser) -> None:
    parser.add_argument("--platform", default=DEFAULT,
                        help=f"comma-separated platforms of the image index (default {DEFAULT}; known: "
                             f"{', '.join(PLATFORMS)})")


def parse_platforms(text: str) -> list[Platform]:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in PLATFORMS]
    if unknown or not names:
        raise ConfigError(f"--platform: {text!r} names {', '.join(repr(n) for n in unknown) or 'no platform'}; "
                          f"known platforms: {', '.join(PLATFORMS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--platform: {text!r} names a platform twice")
    return [PLATFORMS[name] for name in names]
