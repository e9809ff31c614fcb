"""What the model server accepts from a model before it loads it: the tracking server's archive of plain files and
folders inside the model only, no code of its own, and requirements this environment meets (no conda or virtualenv
is created at run time)."""

from __future__ import annotations

import importlib.metadata
import io
import tarfile

import pytest
from flops_mlops.serving.fetch import FetchError, extract_model, refuse_code, unmet_requirements
from flops_mlops.tracking.model_archive import write_archive


def test_an_archive_written_by_the_tracking_server_is_extracted_as_the_model_was(tmp_path):
    model = tmp_path / "model"
    (model / "data").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "data" / "model.pt2").write_bytes(bytes(range(256)) * 100)
    write_archive(model, tmp_path / "model.tar")
    out = tmp_path / "out"
    out.mkdir()
    with (tmp_path / "model.tar").open("rb") as stream:
        extract_model(stream, out, "m version 1")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["MLmodel", "data", "data/model.pt2"]
    assert (out / "data" / "model.pt2").read_bytes() == (model / "data" / "model.pt2").read_bytes()


def tar_with(member: tarfile.TarInfo, content: bytes = b"") -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member.size = len(content) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(content) if member.isfile() else None)
    buffer.seek(0)
    return buffer


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("bad", [member("/etc/cron.d/x"), member("../escape"), member("data/../../x"),
                                 member("link", tarfile.SYMTYPE, "/etc/passwd"), member("hard", tarfile.LNKTYPE, "x"),
                                 member("dev", tarfile.CHRTYPE), member("fifo", tarfile.FIFOTYPE)],
                         ids=["absolute", "parent", "parent-inside", "symlink", "hardlink", "device", "fifo"])
def test_an_archive_member_that_is_not_a_plain_file_inside_the_model_is_refused_and_nothing_is_written(tmp_path, bad):
    with pytest.raises(FetchError, match="not a plain file or folder inside the model"):
        extract_model(tar_with(bad, b"x"), tmp_path, "m version 1")
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "escape").exists()


def test_a_model_with_code_is_refused():
    with pytest.raises(FetchError, match="carries code"):
        refuse_code({"flavors": {"python_function": {"code": "code"}}}, "m version 1")
    refuse_code({"flavors": {"sklearn": {"pickled_model": "model.skops", "code": None}}}, "m version 1")


def test_requirements_this_environment_does_not_meet_are_named(tmp_path):
    numpy = importlib.metadata.version("numpy")
    (tmp_path / "requirements.txt").write_text(
        f"mlflow=={importlib.metadata.version('mlflow')}\nnumpy==0.0.1\nscikit-learn\n"
        "no-such-package-flops==1.0\nwinonly==1.0; sys_platform == 'win32'\n# a comment\n", encoding="utf-8")
    assert unmet_requirements(tmp_path) == [f"numpy==0.0.1: this environment has numpy=={numpy}",
                                            "no-such-package-flops==1.0: not installed"]


def test_no_requirements_file_means_nothing_to_check(tmp_path):
    assert unmet_requirements(tmp_path) == []
