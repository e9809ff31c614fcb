"""A deployment's certificates, made by `secrets init` (or `up`) next to the secrets file with openssl, every file
mode 0600 (for .env: .env.ca.crt, .env.ca.key, ...).

- The deployment's CA: ``<secrets_file>.ca.crt`` and ``.ca.key``. Clients trust the CA's certificate; the key
  only signs leaf certificates here (make_leaf).
- Leaf certificates signed by that CA, ``<secrets_file>.<name>.crt`` and ``.key``, each for a list of DNS names
  and IP addresses (subjectAltName), for servers: ``mysql-tls``, the backend store's (backend_store.tls; the
  tracking servers and our other MySQL clients verify it against the CA), and ``ftp-tls``, the FTP artifact
  store's (artifact_store.tls; vsftpd presents it, the tracking servers verify chain and host name against the
  CA). HTTPS certificates of the tracking servers can be made the same way.

The CA's certificate is mode 0644: it is public (every client needs it), and compose hands it to containers that
run as other uids by bind-mounting the file as it is. Every key, and the leaf certificates, are mode 0600.

One maker at a time: making holds an exclusive lock on ``<secrets_file>.certificates.lock`` (pyinfra prepares each
host's deploy in a thread of its own, and each may ask for the same certificate), and new files replace old ones
whole (a reader sees the old pair or the new one, never a missing file).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .schema import ConfigError
from .stack import StackConfig

DAYS = 825


# --- the deployment's CA and the leaf certificates it signs -------------------------------------------------

MYSQL_LEAF = "mysql-tls"  # the backend store's certificate (backend_store.tls)
# The backend store's service name in compose projects (compose/render.py): the host the tracking servers dial
# there. Every MySQL certificate holds it, so `secrets init` makes one certificate for any target.
COMPOSE_MYSQL_HOST = "backend-store"


def beside_secrets(config: StackConfig, suffix: str) -> Path:
    return config.secrets_file.with_name(f"{config.secrets_file.name}.{suffix}")


def ca_certificate_path(config: StackConfig) -> Path:
    return beside_secrets(config, "ca.crt")


def ca_key_path(config: StackConfig) -> Path:
    return beside_secrets(config, "ca.key")


def leaf_paths(config: StackConfig, name: str) -> tuple[Path, Path]:
    """(certificate, key) of the leaf ``name``."""
    return beside_secrets(config, f"{name}.crt"), beside_secrets(config, f"{name}.key")


def _openssl(config: StackConfig, argv: list[str], what: str) -> None:
    if shutil.which("openssl") is None:
        raise ConfigError(f"{config.source}: making {what} needs openssl; on Debian: apt-get install openssl")
    result = subprocess.run(["openssl", *argv], capture_output=True, umask=0o077)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(f"{config.source}: making {what} failed: {message[-1] if message else 'openssl failed'}")


_held = threading.local()  # how deep this thread is inside _one_maker


@contextmanager
def _one_maker(config: StackConfig) -> Iterator[None]:
    """Hold the deployment's certificate lock (across processes and threads; a nested use shares it)."""
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    path = beside_secrets(config, "certificates.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # Not a blocking flock: pyinfra's hosts are gevent greenlets in one thread, and a greenlet blocked in
        # flock would block the one holding the lock too. time.sleep lets the others run (gevent patches it).
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
    finally:
        os.close(fd)  # and with it the lock


def _put(made: dict[Path, Path]) -> None:
    """Move each new file (made in a folder beside its place) over the old one, whole."""
    for new, place in made.items():
        os.replace(new, place)


def _private(*paths: Path) -> None:
    for path in paths:
        os.chmod(path, 0o600)


def _public(path: Path) -> None:
    """The CA certificate readable by every account (an older release made it 0600); left alone when not ours."""
    try:
        os.chmod(path, 0o644)
    except PermissionError:
        pass


def make_ca(config: StackConfig, force: bool = False) -> bool:
    """The deployment's CA (certificate and key) when missing, or ``force``; True when made."""
    with _one_maker(config):
        return _make_ca(config, force)


def _make_ca(config: StackConfig, force: bool) -> bool:
    crt, key = ca_certificate_path(config), ca_key_path(config)
    if crt.exists() and key.exists() and not force:
        _public(crt)
        return False
    with tempfile.TemporaryDirectory(prefix=".flops-ca-", dir=crt.parent) as folder:
        new_crt, new_key = Path(folder) / "ca.crt", Path(folder) / "ca.key"
        _openssl(config, ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                          "-keyout", str(new_key), "-out", str(new_crt), "-days", str(DAYS), "-subj",
                          f"/O=FLOps MLOps/CN=FLOps MLOps CA {config.name}",
                          "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], "the deployment's CA")
        _put({new_key: key, new_crt: crt})
    _private(key)
    _public(crt)
    return True


def _names(dns_names: Iterable[str], ips: Iterable[str]) -> str:
    found = []
    for name in dict.fromkeys(dns_names):
        found.append(f"DNS:{name}")
    for ip in dict.fromkeys(ips):
        found.append(f"IP:{ipaddress.ip_address(ip)}")
    return ",".join(found)


def split_hosts(hosts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) among ``hosts``."""
    dns, ips = [], []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            ips.append(host)
        except ValueError:
            dns.append(host)
    return dns, ips


def certificate_names(crt: Path) -> set[str]:
    """The subjectAltName entries of the certificate ``crt`` (``DNS:name``, ``IP:address``); empty if unreadable."""
    result = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-ext", "subjectAltName"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return set()
    entries = result.stdout.splitlines()[1:]
    names = {entry.strip().replace("IP Address:", "IP:") for line in entries for entry in line.split(",")}
    return {name for name in names if name}


def signed_by_ca(config: StackConfig, crt: Path) -> bool:
    """Whether the deployment's CA verifies the certificate ``crt`` (not one self-signed by an older release)."""
    result = subprocess.run(["openssl", "verify", "-CAfile", str(ca_certificate_path(config)), str(crt)],
                            capture_output=True)
    return result.returncode == 0


def make_leaf(config: StackConfig, name: str, dns_names: Iterable[str], ips: Iterable[str],
              force: bool = False) -> bool:
    """A server certificate ``name`` for ``dns_names`` and ``ips``, signed by the deployment's CA (made first when
    missing), when missing, when it lacks one of these names, when the CA does not verify it, or ``force``; True
    when made. A CA made anew re-makes the leaf too."""
    with _one_maker(config):
        return _make_leaf(config, name, list(dns_names), list(ips), force)


def _make_leaf(config: StackConfig, name: str, dns_names: list[str], ips: list[str], force: bool) -> bool:
    made_ca = make_ca(config)
    crt, key = leaf_paths(config, name)
    wanted = set(_names(dns_names, ips).split(","))
    if (crt.exists() and key.exists() and not force and not made_ca and wanted <= certificate_names(crt)
            and signed_by_ca(config, crt)):
        return False
    common_name = (dns_names or ips)[0]
    with tempfile.TemporaryDirectory(prefix=f".flops-{name}-", dir=crt.parent) as folder:
        request, extensions = Path(folder) / "leaf.csr", Path(folder) / "leaf.ext"
        new_crt, new_key = Path(folder) / "leaf.crt", Path(folder) / "leaf.key"
        extensions.write_text(f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                              f"extendedKeyUsage=serverAuth\nsubjectAltName={_names(dns_names, ips)}\n",
                              encoding="ascii")
        _openssl(config, ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                          "-keyout", str(new_key), "-out", str(request), "-subj",
                          f"/O=FLOps MLOps/CN={common_name}"], f"the {name} key")
        _openssl(config, ["x509", "-req", "-in", str(request), "-CA", str(ca_certificate_path(config)),
                          "-CAkey", str(ca_key_path(config)), "-set_serial", str(secrets.randbits(120)),
                          "-days", str(DAYS), "-sha256", "-extfile", str(extensions), "-out", str(new_crt)],
                 f"the {name} certificate")
        _private(new_crt, new_key)
        _put({new_key: key, new_crt: crt})
    return True


def mysql_tls(config: StackConfig) -> bool:
    """Whether the tenants' MySQL connections use TLS (backend_store.tls on a mysql backend store)."""
    return config.backend_store.kind == "mysql" and config.backend_store.tls


def mysql_hosts(config: StackConfig, extra: Iterable[str] = ()) -> list[str]:
    """The names the backend store's certificate holds: backend_store.host, compose's service name, loopback and
    ``extra`` (the address other hosts reach it at, pyinfra)."""
    return list(dict.fromkeys([config.backend_store.host, COMPOSE_MYSQL_HOST, "localhost", "127.0.0.1", *extra]))


def make_mysql_certificate(config: StackConfig, force: bool = False, extra_hosts: Iterable[str] = ()) -> bool:
    """With backend_store.tls (kind mysql): the CA and the backend store's certificate when missing (or lacking
    one of the names, see mysql_hosts)."""
    if not mysql_tls(config):
        return False
    return make_leaf(config, MYSQL_LEAF, *split_hosts(mysql_hosts(config, extra_hosts)), force=force)


def mysql_ca(config: StackConfig) -> Path:
    """The CA certificate MySQL clients verify the server against; ConfigError when it is missing."""
    return _existing(config, (ca_certificate_path(config),))[0]


def mysql_files(config: StackConfig) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) of the backend store; ConfigError when one is missing."""
    return _existing(config, (ca_certificate_path(config), *leaf_paths(config, MYSQL_LEAF)))


def _existing(config: StackConfig, files: tuple[Path, ...], key: str = "backend_store.tls") -> tuple[Path, ...]:
    for path in files:
        if not path.is_file():
            raise ConfigError(f"{path}: not found ({key} is true); make it with "
                              f"`flops-mlops --config {config.source} secrets init`, or set {key}: false")
    return files


# --- the FTP artifact store's certificate (artifact_store.tls) ---------------------------------------------

FTP_LEAF = "ftp-tls"
# The artifact store's service name in compose projects (compose/render.py): the host the tracking servers dial
# there. Every FTPS certificate holds it, so `secrets init` makes one certificate for any target.
COMPOSE_FTP_HOST = "artifact-store"


def ftp_hosts(config: StackConfig, extra: Iterable[str] = ()) -> list[str]:
    """The names the artifact store's certificate holds: artifact_store.host, compose's service name, loopback and
    ``extra`` (the address other hosts reach it at, pyinfra)."""
    hosts = [config.artifact_store.host, COMPOSE_FTP_HOST, "localhost", "127.0.0.1", *extra]
    if "oakestra" in config.model_fields_set and config.oakestra.run_stores:  # each tenant's FTP service IP
        hosts += [ips[1] for tenant in config.tenants if (ips := config.oakestra.tenant_ips(tenant.id))]
    return list(dict.fromkeys(host for host in hosts if host not in ("0.0.0.0", "::")))  # a listening wildcard


def certificate_path(config: StackConfig) -> Path:
    return leaf_paths(config, FTP_LEAF)[0]


def key_path(config: StackConfig) -> Path:
    return leaf_paths(config, FTP_LEAF)[1]


def make_certificate(config: StackConfig, force: bool = False, extra_hosts: Iterable[str] = ()) -> bool:
    """With artifact_store.tls: the CA and the artifact store's certificate and key when missing, lacking a name
    of ftp_hosts, not signed by the CA (an older release's self-signed one), or ``force``; True when made."""
    if not config.artifact_store.tls:
        return False
    return make_leaf(config, FTP_LEAF, *split_hosts(ftp_hosts(config, extra_hosts)), force=force)


def ftp_files(config: StackConfig) -> tuple[Path, Path, Path]:
    """(CA certificate, store certificate, store key) of the FTP artifact store; ConfigError when one is missing."""
    return _existing(config, (ca_certificate_path(config), *leaf_paths(config, FTP_LEAF)), "artifact_store.tls")


def ca_pem(config: StackConfig, ca_file: Path | None = None) -> str:
    """The CA certificate's PEM text the tracking servers verify the FTP store against (FLOPS_FTP_CA_PEM):
    ``ca_file``, default the deployment's, beside the secrets file."""
    ca = ca_file or ca_certificate_path(config)
    try:
        return ca.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"{ca}: CA certificate not found (artifact_store.tls is true); make it with "
                          f"`flops-mlops --config {config.source} secrets init`") from None


# --- HTTPS of the tracking servers (tracking.tls) -------------------------------------------------------------


def tracking_leaf(tenant_id: str) -> str:
    """The name of a tenant's tracking server certificate: ``<secrets_file>.tracking-<tenant>.crt``."""
    return f"tracking-{tenant_id}"


# A tenant's tracking server in compose projects (compose/render.py): the first tenant's service is this name,
# tenant t's after it ``tracking-server-t``; the aggregator and the model server dial it by that name.
COMPOSE_TRACKING_SERVICE = "tracking-server"


def compose_tracking_service(config: StackConfig, tenant_id: str) -> str:
    """The compose service name of tenant ``tenant_id``'s tracking server."""
    first = config.tenants[0].id == tenant_id
    return COMPOSE_TRACKING_SERVICE if first else f"{COMPOSE_TRACKING_SERVICE}-{tenant_id}"


def tracking_hosts(config: StackConfig, tenant_id: str | None = None) -> list[str]:
    """The names a tracking server's certificate holds: public_host, host (unless a wildcard address),
    allowed_hosts (without their port), with ``tenant_id`` its compose service name (so one certificate serves
    any target) and, with an oakestra section, its service IP (rr_ip), localhost and 127.0.0.1."""
    t = config.tracking
    hosts = [t.public_host, *([] if t.host in ("0.0.0.0", "::") else [t.host])]
    if tenant_id is not None:
        hosts.append(compose_tracking_service(config, tenant_id))
        if "oakestra" in config.model_fields_set:
            hosts += [ips[0] for ips in [config.oakestra.tenant_ips(tenant_id)] if ips]
    for allowed in t.allowed_hosts:  # HOST, HOST:PORT or HOST:* (values.AllowedHost); '*.domain' left out
        host = allowed.partition(":")[0]
        if "*" not in host:
            hosts.append(host)
    return list(dict.fromkeys([*hosts, "localhost", "127.0.0.1"]))


def make_tracking_certificates(config: StackConfig, force: bool = False,
                               tenant_ids: Iterable[str] | None = None) -> list[str]:
    """With tracking.tls and no certificate of the user's own: the CA and each tenant server's certificate (of
    ``tenant_ids``, default every tenant) when missing, lacking one of its names, or ``force`` (a renewal; the CA
    is kept); the ids of the tenants whose certificate was made."""
    t = config.tracking
    if not t.tls or t.tls_certificate is not None:
        return []
    ids = [tenant.id for tenant in config.tenants] if tenant_ids is None else list(tenant_ids)
    return [tenant_id for tenant_id in ids
            if make_leaf(config, tracking_leaf(tenant_id), *split_hosts(tracking_hosts(config, tenant_id)),
                         force=force)]


def make_tracking_certificates_for(config: StackConfig, extra_hosts: Iterable[str]) -> list[str]:
    """make_tracking_certificates for servers also reached at ``extra_hosts`` (a pyinfra host's inventory name
    and address): each tenant's certificate holds tracking_hosts and those; the ids of the tenants whose
    certificate was made (none with a certificate of the user's own)."""
    if not config.tracking.tls or config.tracking.tls_certificate is not None:
        return []
    extra = [host for host in extra_hosts if host not in ("", "0.0.0.0", "::")]
    dns, ips = split_hosts(dict.fromkeys([*tracking_hosts(config), *extra]))
    return [tenant.id for tenant in config.tenants if make_leaf(config, tracking_leaf(tenant.id), dns, ips)]


def tracking_files(config: StackConfig, tenant_id: str) -> tuple[Path, Path]:
    """(certificate, key) the tenant's tracking server presents: the user's own (tracking.tls_certificate and
    tls_key) or ours; ConfigError naming the missing file."""
    t = config.tracking
    if t.tls_certificate is not None and t.tls_key is not None:
        files = ((t.tls_certificate, "tracking.tls_certificate"), (t.tls_key, "tracking.tls_key"))
        for path, key in files:
            if not path.is_file():
                raise ConfigError(f"{config.source}: {key}: {path}: no such file")
        return t.tls_certificate, t.tls_key
    crt, key = leaf_paths(config, tracking_leaf(tenant_id))
    for path in (crt, key):
        if not path.is_file():
            raise ConfigError(f"{path}: not found (tracking.tls is true); make it with "
                              f"`flops-mlops --config {config.source} secrets init`, or set tracking.tls: false")
    return crt, key


def tracking_ca(config: StackConfig) -> Path | None:
    """The CA certificate our clients verify the tracking servers against: the deployment's, tracking.tls_ca with a
    certificate of the user's own, None for the system's store (or when tracking.tls is off)."""
    t = config.tracking
    if not t.tls:
        return None
    if t.tls_certificate is not None:
        if t.tls_ca is not None and not t.tls_ca.is_file():
            raise ConfigError(f"{config.source}: tracking.tls_ca: {t.tls_ca}: no such file")
        return t.tls_ca
    ca = ca_certificate_path(config)
    if not ca.is_file():
        raise ConfigError(f"{ca}: not found (tracking.tls is true); make it with "
                          f"`flops-mlops --config {config.source} secrets init`, or set tracking.tls: false")
    return ca


def expiry(crt: Path) -> str | None:
    """The certificate's notAfter date as openssl prints it (``Mar  9 12:00:00 2029 GMT``); None if unreadable."""
    result = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-enddate"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        return None
    return result.stdout.strip().partition("=")[2] or None
