"""A real image registry for push tests: Debian's docker-registry (CNCF distribution 2.8.2) on a free loopback port,
with its own storage folder, HTTPS by a certificate our certificates module signs with a test CA, and htpasswd
logins (bcrypt). Stopped by its recorded pid. And what a pushed image must be: read back through the registry's
API, the tag resolves to the layout's index, and every manifest and blob has the layout's digest."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import requests
import yaml
from conftest import free_port, need_binary
from flops_mlops.configuration import certificates, loading
from flops_mlops.configuration.secrets import REGISTRY_PASSWORD_KEY, REGISTRY_USER_KEY, new_password
from flops_mlops.images.oci import INDEX, MANIFEST
from flops_mlops.processes import ManagedProcess, wait_until, write_private

USER = "pusher"


@dataclass(frozen=True)
class TestRegistry:
    host: str  # 127.0.0.1:PORT
    ca: Path
    password: str

    def get(self, repository: str, path: str, accept: str = "") -> requests.Response:
        answer = requests.get(f"https://{self.host}/v2/{repository}/{path}", auth=(USER, self.password),
                              headers={"Accept": accept} if accept else {}, verify=str(self.ca), timeout=30)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer


@contextmanager
def running_registry(folder: Path) -> Iterator[TestRegistry]:
    need_binary("docker-registry")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stack.yaml").write_text(yaml.safe_dump({"name": "registry", "state_dir": str(folder / "state"),
                                                       "secrets_file": str(folder / "ca.env"),
                                                       "tenants": [{"id": "acme"}]}))
    config = loading.load(folder / "stack.yaml")
    certificates.make_leaf(config, "registry", ["localhost"], ["127.0.0.1"])
    crt, key = certificates.leaf_paths(config, "registry")
    password = new_password()
    write_private(folder / "htpasswd", f"{USER}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")
    port = free_port()
    settings = {"version": 0.1, "log": {"level": "info", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(folder / "storage")}},
                "http": {"addr": f"127.0.0.1:{port}", "secret": new_password(),
                         "tls": {"certificate": str(crt), "key": str(key)}},
                "auth": {"htpasswd": {"realm": "flops-test", "path": str(folder / "htpasswd")}}}
    write_private(folder / "registry.yml", yaml.safe_dump(settings))
    process = ManagedProcess("docker-registry", folder)
    process.start(["docker-registry", "serve", str(folder / "registry.yml")], env={"PATH": os.environ["PATH"]})
    ca = certificates.ca_certificate_path(config)

    def answers() -> bool:
        try:
            return requests.get(f"https://127.0.0.1:{port}/v2/", verify=str(ca), timeout=2).status_code == 401
        except requests.RequestException:
            return False
    try:
        wait_until(answers, process, "docker-registry", timeout=30)
        yield TestRegistry(f"127.0.0.1:{port}", ca, password)
    finally:
        process.stop()


def add_login(secrets_file: Path, password: str) -> None:
    """The registry's login in a secrets file (kept 0600), as a user adds it by hand."""
    lines = [line for line in (secrets_file.read_text().splitlines() if secrets_file.exists() else [])
             if not line.startswith(("FLOPS_REGISTRY_",))]
    write_private(secrets_file, "\n".join([*lines, f"{REGISTRY_USER_KEY}={USER}",
                                           f"{REGISTRY_PASSWORD_KEY}={password}"]) + "\n")


def layout_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def assert_pushed(registry: TestRegistry, layout: Path, repository: str, tag: str) -> list[str]:
    """The tag resolves to the layout's image index, byte for byte; each platform's manifest, config and layers are
    in the registry under the layout's digests. Returns the platforms' architectures."""
    (top,) = json.loads((layout / "index.json").read_text())["manifests"]
    answer = registry.get(repository, f"manifests/{tag}", INDEX)
    assert answer.headers["Docker-Content-Digest"] == top["digest"]
    assert answer.content == layout_blob(layout, top["digest"])
    architectures = []
    for entry in json.loads(answer.content)["manifests"]:
        architectures.append(entry["platform"]["architecture"])
        manifest = registry.get(repository, f"manifests/{entry['digest']}", MANIFEST)
        assert hashlib.sha256(manifest.content).hexdigest() == entry["digest"].removeprefix("sha256:")
        assert manifest.content == layout_blob(layout, entry["digest"])
        document = json.loads(manifest.content)
        for blob in [document["config"], *document["layers"]]:
            stored = registry.get(repository, f"blobs/{blob['digest']}").content
            assert len(stored) == blob["size"]
            assert hashlib.sha256(stored).hexdigest() == blob["digest"].removeprefix("sha256:")
    return architectures
