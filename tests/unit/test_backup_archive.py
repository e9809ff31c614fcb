"""The backup archive (backup/archive.py): what `backup` writes reads back checked; every kind of damaged or foreign
archive is refused with a message naming the file and the member, before anything is used."""

from __future__ import annotations

import io
import json
import stat
import tarfile

import pytest
from flops_mlops.backup import archive
from flops_mlops.configuration.schema import ConfigError


def written(tmp_path):
    staging = tmp_path / "staging"
    (staging / "db").mkdir(parents=True)
    (staging / "artifacts" / "1" / "models").mkdir(parents=True)
    (staging / "db" / "auth.sqlite").write_bytes(b"auth")
    (staging / "artifacts" / "1" / "models" / "MLmodel").write_bytes(b"flavors: {}\n")
    out = tmp_path / "out"
    out.mkdir()
    return archive.write(staging, {"format": archive.FORMAT, "tenant": "acme"}, out / "a.tar")


def test_written_archive_is_private_manifest_first_databases_before_artifacts_and_reads_back(tmp_path):
    path = written(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["manifest.json", "db/auth.sqlite", "artifacts/1/models/MLmodel"]
    target = tmp_path / "x"
    target.mkdir()
    checked = archive.extract_checked(path, target)
    assert checked.manifest["tenant"] == "acme"
    assert (checked.artifacts / "1" / "models" / "MLmodel").read_bytes() == b"flavors: {}\n"
    assert not list(path.parent.glob(".*"))  # no partial file left


def rebuilt(tmp_path, members: list[tuple[tarfile.TarInfo, bytes]], manifest: dict | None = None):
    """An archive with ``members`` after a manifest (by default: the one of written(), unchanged)."""
    original = written(tmp_path)
    with tarfile.open(original) as tar:
        default = json.loads(tar.extractfile("manifest.json").read())
        kept = [(info, tar.extractfile(info).read()) for info in tar.getmembers()[1:]]
    text = json.dumps(default if manifest is None else manifest).encode()
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        for info, data in (kept if members is None else members(kept)):
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def file(name: str, data: bytes = b"x"):
    return tarfile.TarInfo(name), data


def link(name: str):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info, b""


CASES = {
    "changed byte": (lambda kept: [kept[0], (kept[1][0], b"flavors: {}!\n")], "checksum mismatch"),
    "extra member": (lambda kept: [*kept, file("artifacts/evil")], "'artifacts/evil' is not in manifest.json"),
    "missing member": (lambda kept: kept[:1], "names 1 file(s) the archive lacks"),
    "absolute path": (lambda kept: [*kept, file("/etc/cron.d/x")], "is not a plain relative path"),
    "parent path": (lambda kept: [*kept, file("artifacts/../../x")], "is not a plain relative path"),
    "symbolic link": (lambda kept: [*kept, link("artifacts/link")], "is not a regular file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_archives_are_refused_naming_file_and_member(tmp_path, case):
    members, message = CASES[case]
    path = rebuilt(tmp_path, members)
    target = tmp_path / "x"
    target.mkdir()
    with pytest.raises(ConfigError) as refused:
        archive.extract_checked(path, target)
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)
    assert "nothing was changed" in str(refused.value)


@pytest.mark.parametrize("manifest, message", [
    ({"format": "something-else/9", "files": []}, "format: expected 'flops-mlops-backup/1'"),
    ({"format": archive.FORMAT, "files": "all"}, "files: expected a list"),
])
def test_foreign_manifests_are_refused(tmp_path, manifest, message):
    path = rebuilt(tmp_path, lambda kept: [], manifest)
    with pytest.raises(ConfigError, match=message):
        archive.read_manifest(path)
