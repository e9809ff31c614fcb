"""The backup archive of one tenant: an uncompressed tar, mode 0600, written under a temporary name and renamed
when complete. Its first member is manifest.json; then the databases, then the artifacts:

    manifest.json             format, tenant, stack, time (UTC), MLflow version, schema revisions, and for every
                              other member its size and sha256
    db/tracking.sql           MySQL/MariaDB stacks: the tenant's tracking database (mariadb-dump)
    db/tracking.sqlite        SQLite stacks: the same, a SQLite database
    db/auth.sql               the tenant's users and grants on MySQL/MariaDB (mlflow_<tenant>_auth, mariadb-dump)
    db/auth.sqlite            the same on SQLite (the tracking server's auth database file)
    artifacts/<path>          every file of the tenant's FTP folder, by its path there

Reading it back checks everything before anything is used: only regular files and folders with plain relative
names, every member named by the manifest with its size and checksum, nothing more, nothing missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..configuration.schema import ConfigError

FORMAT = "flops-mlops-backup/1"
MANIFEST = "manifest.json"
TRACKING_SQL, TRACKING_SQLITE, AUTH_SQLITE = "db/tracking.sql", "db/tracking.sqlite", "db/auth.sqlite"
AUTH_SQL = "db/auth.sql"  # the auth database on MySQL/MariaDB; archives of earlier releases hold AUTH_SQLITE
ARTIFACTS = "artifacts"
BLOCK = 1024 * 1024


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def archive_name(tenant_id: str, when: float) -> str:
    return f"flops-backup-{tenant_id}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}.tar"


def write(staging: Path, manifest: dict[str, Any], out: Path) -> Path:
    """The archive of every file under ``staging`` (relative paths kept), with ``manifest`` (completed with each
    file's size and sha256) first; written 0600 to ``out`` under a temporary name, then renamed."""
    # The databases first, then the artifacts: the order they were copied in.
    members = sorted((p for p in staging.rglob("*") if p.is_file()),
                     key=lambda p: (p.relative_to(staging).parts[0] != "db", p))
    manifest = {**manifest, "files": [{"path": p.relative_to(staging).as_posix(), "size": p.stat().st_size,
                                       "sha256": sha256(p)} for p in members]}
    manifest_file = staging.parent / f".{out.name}.manifest.json"
    manifest_file.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    partial = out.with_name(f".{out.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(manifest_file, MANIFEST, filter=_plain)
            for path in members:
                tar.add(path, path.relative_to(staging).as_posix(), filter=_plain)
            tar.close()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        manifest_file.unlink(missing_ok=True)
    return out


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids of this machine in the archive; private modes."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o600
    return info


@dataclass(frozen=True)
class Checked:
    """An archive whose members were all extracted into ``folder`` and matched the manifest."""

    manifest: dict[str, Any]
    folder: Path

    @property
    def artifacts(self) -> Path:
        return self.folder / ARTIFACTS

    def file(self, name: str) -> Path | None:
        path = self.folder / name
        return path if path.is_file() else None


def _problem(archive: Path, text: str) -> ConfigError:
    return ConfigError(f"{archive}: {text}; nothing was changed")


def _safe_name(archive: Path, name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise _problem(archive, f"member {name!r} is not a plain relative path")
    return path.as_posix()


def read_manifest(archive: Path) -> dict[str, Any]:
    try:
        with tarfile.open(archive, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise _problem(archive, f"not a flops-mlops backup (its first member is not {MANIFEST})")
            manifest = json.loads(tar.extractfile(first).read().decode("utf-8"))
    except (tarfile.TarError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _problem(archive, f"cannot read the archive: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _problem(archive, f"manifest.json: format: expected {FORMAT!r}, got "
                                f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and {"path", "size", "sha256"} <= set(f)
                                              for f in files):
        raise _problem(archive, "manifest.json: files: expected a list of {path, size, sha256}")
    return manifest


def extract_checked(archive: Path, folder: Path) -> Checked:
    """Extract every member into ``folder`` (a private, empty folder), checking each against the manifest."""
    manifest = read_manifest(archive)
    expected = {_safe_name(archive, f["path"]): f for f in manifest["files"]}
    seen: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for info in tar:
                name = _safe_name(archive, info.name)
                if name == MANIFEST or info.isdir():
                    continue
                if not info.isfile():
                    raise _problem(archive, f"member {name!r} is not a regular file")
                entry = expected.get(name)
                if entry is None or name in seen:
                    raise _problem(archive, f"member {name!r} is not in manifest.json (or appears twice)")
                seen.add(name)
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                digest, size = hashlib.sha256(), 0
                source = tar.extractfile(info)
                with open(target, "xb") as out:
                    while chunk := source.read(BLOCK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                    raise _problem(archive, f"member {name!r}: checksum mismatch (size {size}, expected "
                                            f"{entry['size']}; sha256 {digest.hexdigest()[:12]}..., expected "
                                            f"{str(entry['sha256'])[:12]}...): the archive is damaged")
    except (tarfile.TarError, OSError) as exc:
        raise _problem(archive, f"cannot read the archive: {exc}") from None
    missing = sorted(set(expected) - seen)
    if missing:
        raise _problem(archive, f"manifest.json names {len(missing)} file(s) the archive lacks, first {missing[0]!r}")
    return Checked(manifest, folder)
