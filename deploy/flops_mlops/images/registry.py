"""A client of the OCI distribution API (what `docker push` speaks), for pushing an image: HTTPS only, the registry's
certificate verified (a CA file, or the system's store), a login by basic auth or the token it leads to.

What it does: HEAD a blob (is it there?), upload one monolithically (POST an upload, PUT its bytes with the digest),
PUT a manifest or an image index by digest or tag, GET one back. A refusal raises RegistryError with the HTTP status
and the registry's own error message. The login is sent to the registry host only, never to another address.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import requests

from ..configuration.schema import ConfigError
from ..processes import StackError

# registry host[:port] / repository path : tag. The host is named (a dot, a port or localhost): a bare name would
# mean Docker Hub, which we do not imply.
REFERENCE = re.compile(r"^(?P<host>(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+|[a-z0-9-]+(?=:[0-9]))(?::[0-9]+)?)"
                       r"/(?P<repository>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
                       r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")
TIMEOUT = (30, 300)  # connect, read (a registry may take long to commit a large blob)
CHUNK = 1 << 20


class RegistryError(StackError):
    """The registry refused a request: its HTTP status and message."""


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


def parse_reference(text: str, option: str = "--push") -> Reference:
    match = REFERENCE.fullmatch(text)
    if match is None:
        raise ConfigError(f"{option}: {text!r} is not REGISTRY/REPOSITORY:TAG (e.g. registry.example:5000/"
                          "flops-mlops/model-server:0.1.0: the registry's host, a lowercase repository path, an "
                          "explicit tag)")
    return Reference(match["host"], match["repository"], match["tag"])


class Registry:
    """One repository of one registry, logged in as ``login`` (user, password) when given."""

    def __init__(self, reference: Reference, login: tuple[str, str] | None, ca_file: Path | None = None):
        self.reference = reference
        self.base = f"https://{reference.host}/v2/{reference.repository}"
        self.login = login
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy or netrc login from the environment: only what we were given
        self.session.verify = str(ca_file) if ca_file else True
        self.authorization: str | None = None  # the header the registry's challenge asked for

    def check(self) -> None:
        """GET /v2/: the registry speaks the API, and takes the login (before anything is uploaded)."""
        self.request("GET", f"https://{self.reference.host}/v2/", ok=(200,))

    def blob_exists(self, digest: str) -> bool:
        answer = self.request("HEAD", f"{self.base}/blobs/{digest}", ok=(200, 404))
        return answer.status_code == 200

    def upload_blob(self, digest: str, size: int, open_blob: Callable[[], BinaryIO],
                    progress: Callable[[int], None] = lambda sent: None) -> None:
        """POST an upload, then PUT the whole blob (``open_blob`` gives its bytes) with its digest."""
        started = self.request("POST", f"{self.base}/blobs/uploads/", ok=(202,))
        location = started.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.reference.host}: POST {self.base}/blobs/uploads/ answered 202 without a "
                                "Location for the upload")
        url = urljoin(f"https://{self.reference.host}/", location)
        if urlsplit(url).hostname != urlsplit(f"https://{self.reference.host}/").hostname:
            raise RegistryError(f"{self.reference.host}: the upload's Location {location!r} is another host; the "
                                "login is sent to the registry's host only")
        url += ("&" if urlsplit(url).query else "?") + f"digest={digest}"
        with open_blob() as data:
            self.request("PUT", url, ok=(201,), data=Counting(data, size, progress),
                         headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})

    def put_manifest(self, reference: str, media_type: str, content: bytes) -> str:
        """PUT a manifest or image index under ``reference`` (a digest or a tag); returns the digest it answers."""
        answer = self.request("PUT", f"{self.base}/manifests/{reference}", ok=(201,), data=content,
                              headers={"Content-Type": media_type})
        return answer.headers.get("Docker-Content-Digest", "")

    def get_manifest(self, reference: str, media_type: str) -> requests.Response:
        return self.request("GET", f"{self.base}/manifests/{reference}", ok=(200,), headers={"Accept": media_type})

    def request(self, method: str, url: str, ok: tuple[int, ...], **kwargs) -> requests.Response:
        """Send, logging in when the registry asks (once); a status outside ``ok`` raises RegistryError."""
        for attempt in (1, 2):
            headers = dict(kwargs.pop("headers", {}) or {})
            if self.authorization:
                headers["Authorization"] = self.authorization
            try:
                answer = self.session.request(method, url, headers=headers, timeout=TIMEOUT, allow_redirects=False,
                                              **kwargs)
            except requests.exceptions.SSLError as exc:
                raise StackError(f"{self.reference.host}: its HTTPS certificate is not trusted ({exc}); name the CA "
                                 "that signed it with --registry-ca FILE") from None
            except requests.exceptions.RequestException as exc:
                raise StackError(f"{self.reference.host}: {method} {url}: {exc}") from None
            kwargs["headers"] = headers
            if answer.status_code == 401 and attempt == 1 and not hasattr(kwargs.get("data"), "read"):
                self.authorization = self.log_in(answer.headers.get("WWW-Authenticate", ""))
                continue
            if answer.status_code not in ok:
                raise RegistryError(refusal(self.reference, method, url, answer, self.login))
            return answer
        raise AssertionError("unreachable")

    def log_in(self, challenge: str) -> str:
        """The Authorization header that answers the registry's challenge: basic auth, or a bearer token from the
        realm it names (fetched with basic auth, for pull and push on this repository)."""
        if self.login is None:
            raise RegistryError(f"{self.reference.host} asks for a login and the secrets file has none: set "
                                "FLOPS_REGISTRY_USER and FLOPS_REGISTRY_PASSWORD in it")
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            return "Basic " + base64.b64encode(":".join(self.login).encode()).decode()
        if scheme.lower() != "bearer":
            raise RegistryError(f"{self.reference.host}: unknown login scheme {challenge!r} (basic and bearer known)")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        realm = fields.pop("realm", "")
        if not realm.startswith("https://"):
            raise RegistryError(f"{self.reference.host}: its token service {realm!r} is not HTTPS; the login is sent "
                                "over HTTPS only")
        fields.setdefault("scope", f"repository:{self.reference.repository}:pull,push")
        try:
            answer = self.session.get(realm, params=fields, auth=self.login, timeout=TIMEOUT)
        except requests.exceptions.RequestException as exc:
            raise StackError(f"{self.reference.host}: its token service {realm}: {exc}") from None
        if answer.status_code != 200:
            raise RegistryError(refusal(self.reference, "GET", realm, answer, self.login))
        token = answer.json().get("token") or answer.json().get("access_token")
        return f"Bearer {token}"


def refusal(reference: Reference, method: str, url: str, answer: requests.Response, login) -> str:
    """What the registry refused, in its words (the distribution API's {"errors": [{"code", "message"}]})."""
    try:
        errors = answer.json().get("errors") or []
        said = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
    except ValueError:
        said = answer.text.strip()[:300]
    text = f"{reference.host} refused {method} {urlsplit(url).path}: HTTP {answer.status_code} {answer.reason}" + \
        (f" ({said})" if said else "")
    if answer.status_code == 401:
        text += ": check FLOPS_REGISTRY_USER and FLOPS_REGISTRY_PASSWORD in the secrets file" if login else \
            ": set FLOPS_REGISTRY_USER and FLOPS_REGISTRY_PASSWORD in the secrets file"
    return text


class Counting:
    """A blob's bytes as a request body of known length that reports how much was sent."""

    def __init__(self, data: BinaryIO, size: int, progress: Callable[[int], None]):
        self.data, self.size, self.progress, self.sent = data, size, progress, 0

    def __len__(self) -> int:
        return self.size - self.sent

    def read(self, amount: int = CHUNK) -> bytes:
        chunk = self.data.read(min(max(amount, CHUNK), self.size - self.sent))
        self.sent += len(chunk)
        self.progress(self.sent)
        return chunk


def throttled(report: Callable[[str], None], name: str, size: int, every: float = 5.0) -> Callable[[int], None]:
    """A progress callback that reports ``name``'s upload at most every ``every`` seconds, and at its end."""
    last = [time.monotonic()]

    def progress(sent: int) -> None:
        now = time.monotonic()
        if sent >= size or now - last[0] >= every:
            last[0] = now
            report(f"  {name}: {sent / 1e6:.1f} of {size / 1e6:.1f} MB ({100 * sent // max(size, 1)}%)")
    return progress
