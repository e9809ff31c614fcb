"""HTTPS on the Oakestra tracking servers and FTPS on its artifact stores (tracking.tls, artifact_store.tls; on in
configs/oakestra.yaml): the rendered SLAs name certificates and keys only as ${file:<name>} placeholders, push
fills them from beside the secrets file through the fake orchestrator, and the containers' entrypoints turn them
back into private files that a real TLS handshake accepts, verified against the deployment's CA."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import yaml
from conftest import ROOT
from test_oakestra_push import deployment, environment_of  # noqa: F401 - the fixture

from flops_mlops.configuration import certificates, pem_env
from flops_mlops.configuration import loading as config_module
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.oakestra import sla
from flops_mlops.tracking import container
from flops_mlops.tracking.server import server_argv


@pytest.fixture(autouse=True)
def private_temporary_folder(tmp_path, monkeypatch):
    """The entrypoints write decoded PEM files (test keys) under the system's temporary folder: pytest's here."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def shipped(tmp_path: Path, edit=None) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "oakestra.yaml").read_text())
    data["state_dir"], data["secrets_file"] = str(tmp_path / "state"), str(tmp_path / "secrets.env")
    if edit:
        edit(data)
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_rendered_files_hold_placeholders_for_certificates_and_keys_never_their_text(tmp_path):
    config = config_module.load(shipped(tmp_path))
    assert config.tracking.tls and config.artifact_store.tls  # on by default in configs/oakestra.yaml
    rendered = {item.file_name: item for item in sla.render_all(config)}
    text = "".join(item.text for item in rendered.values())
    assert "BEGIN" not in text and "PRIVATE" not in text
    acme = environment_of(rendered["tracking.json"].document["applications"][0]["microservices"][0])
    assert acme["FLOPS_TLS"] == "true" and acme["FLOPS_FTP_TLS"] == "true"
    assert acme["FLOPS_TLS_CERTIFICATE_B64"] == "${file:tracking-acme.crt}"
    assert acme["FLOPS_TLS_KEY_B64"] == "${file:tracking-acme.key}"
    assert acme["FLOPS_TLS_CA_B64"] == acme["FLOPS_FTP_CA_B64"] == "${file:ca.crt}"
    store = environment_of(rendered["stores.json"].document["applications"][0]["microservices"][1])
    assert store["FLOPS_FTP_TLS_KEY_B64"] == "${file:ftp-tls.key}" and store["FLOPS_FTP_CA_B64"] == "${file:ca.crt}"
    aggregator = environment_of(rendered["mnist.json"].document["applications"][0]["microservices"][0])
    assert aggregator["FLOPS_TRACKING_URI"] == "https://10.30.101.1:5000"
    assert aggregator["FLOPS_TRACKING_CA_B64"] == "${file:ca.crt}"
    for item in rendered.values():  # no placeholder, and no file name, outside environment
        for service in item.document["applications"][0]["microservices"]:
            assert "${" not in json.dumps({k: v for k, v in service.items() if k != "environment"})


@pytest.mark.parametrize("item, message", [
    ("FLOPS_TLS_KEY_B64=${file:other.key}", r"\$\{file:other.key\} is not a file this configuration needs"),
    ("FLOPS_TLS_KEY_B64=${file:../x}", r"\$\{file:../x\} is neither a secret placeholder"),
    ("FLOPS_X=${flops_lower}", r"\$\{flops_lower\} is neither a secret placeholder"),
])
def test_placeholders_stay_strict(tmp_path, item, message):
    config = config_module.load(shipped(tmp_path))
    document = next(r for r in sla.render_all(config) if r.file_name == "tracking.json").document
    document["applications"][0]["microservices"][0]["environment"].append(item)
    with pytest.raises(sla.SlaError, match=r"tracking\.json\.j2: applications\[0\]\.microservices\[0\]\."
                                           r"environment\[\d+\]: .*" + message):
        sla.validate(document, "tracking.json.j2", 30, None, set(sla.pem_files(config)))
    document["applications"][0]["microservices"][0]["cmd"].append("${file:ca.crt}")
    with pytest.raises(sla.SlaError, match=r"\.cmd: .*secret placeholders are allowed only in environment"):
        sla.validate(document, "tracking.json.j2", 30)


def test_without_tls_nothing_of_it_is_rendered(tmp_path):
    def off(data):
        data["tracking"]["tls"] = data["artifact_store"]["tls"] = False
    config = config_module.load(shipped(tmp_path, off))
    assert sla.pem_files(config) == {}
    text = "".join(item.text for item in sla.render_all(config))
    assert "${file:" not in text and "TLS" not in text and "https://" not in text


def test_a_certificate_of_ones_own_is_refused_on_oakestra(tmp_path):
    def own(data):
        data["tracking"].update(tls_certificate="mine.crt", tls_key="mine.key")
    config = config_module.load(shipped(tmp_path, own))
    with pytest.raises(ConfigError, match=r"stack\.yaml: tracking\.tls_certificate: on Oakestra .* got '.*mine\.crt'"):
        sla.render_all(config)


def test_certificates_name_the_service_ips(tmp_path):
    config = config_module.load(shipped(tmp_path))
    certificates.make_tracking_certificates(config)
    certificates.make_certificate(config)
    acme = certificates.certificate_names(certificates.leaf_paths(config, "tracking-acme")[0])
    assert {"IP:10.30.101.1", "IP:127.0.0.1", "DNS:localhost"} <= acme and "IP:10.30.101.2" not in acme
    ftp = certificates.certificate_names(certificates.certificate_path(config))
    assert {"IP:10.30.102.1", "IP:10.30.102.2"} <= ftp


class _Https(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def _serve_https(certificate: Path, key: Path) -> tuple[http.server.HTTPServer, int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Https)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def test_push_fills_the_files_and_the_containers_decode_them_into_a_working_tls_pair(deployment):  # noqa: F811
    d = deployment()
    result = d.push()
    assert result.returncode == 0, result.stderr
    config = config_module.load(d.config)
    stored = json.dumps(list(d.fake.services.values()))
    assert "${" not in stored and "BEGIN" not in stored
    acme = environment_of(d.fake.services_of("tracking")["acme"])
    key_file = certificates.leaf_paths(config, "tracking-acme")[1]
    assert acme["FLOPS_TLS_KEY_B64"] == pem_env.encode(key_file.read_bytes())
    assert acme["FLOPS_TLS_KEY_B64"] not in result.stdout + result.stderr
    # The tracking server's entrypoint: private files, their paths on the server's command line, never the key.
    settings = {**acme, **container.pem_files_from_b64(acme)}
    crt, key = container.tls_files(settings)
    assert key.read_bytes() == key_file.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert Path(settings["FLOPS_FTP_CA_FILE"]).read_bytes() == certificates.ca_certificate_path(config).read_bytes()
    stack, tenant, _ = container.stack_from_env({**settings, "FLOPS_FTP_HOST": "10.30.102.1"})
    argv = server_argv(stack, tenant, (crt, key))
    assert argv[argv.index("--ssl-keyfile") + 1] == str(key) and acme["FLOPS_TLS_KEY_B64"] not in " ".join(argv)
    # The aggregator's side: the CA from its environment verifies the server (127.0.0.1 is in every certificate).
    aggregator = dict(environment_of(d.fake.services_of("mnist")["aggregator"]))
    ca = pem_env.export_tracking_ca(aggregator)
    assert aggregator["MLFLOW_TRACKING_SERVER_CERT_PATH"] == str(ca)
    server, port = _serve_https(crt, key)
    try:
        assert requests.get(f"https://127.0.0.1:{port}/health", verify=str(ca), timeout=10).text == "OK"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://127.0.0.1:{port}/health", timeout=10)  # the system's store does not know it
    finally:
        server.shutdown()
    # The artifact store's entrypoint runs pem_env.py as a script (standard library only) with its environment.
    store = environment_of(d.fake.services_of("stores")["ftpacme"])
    folder = d.tmp / "ftp-pem"
    run = subprocess.run([sys.executable, str(Path(pem_env.__file__)), str(folder), "FLOPS_FTP_TLS_CERT_B64=ftp.crt",
                          "FLOPS_FTP_TLS_KEY_B64=ftp.key", "FLOPS_FTP_CA_B64=ca.crt"],
                         env={"PATH": os.environ["PATH"], **store}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (folder / "ftp.key").read_bytes() == certificates.key_path(config).read_bytes()
    assert stat.S_IMODE((folder / "ftp.key").stat().st_mode) == 0o600


def test_push_without_a_certificate_file_exits_2_naming_it(deployment):  # noqa: F811
    d = deployment()
    missing = d.tmp / "secrets.env.tracking-globex.key"
    missing.unlink()
    result = d.push()
    assert result.returncode == 2
    assert f"{missing}: tenant globex's tracking server key: no such file or directory (tracking.tls is true); " \
           "make it with `flops-mlops --config" in result.stderr
    assert not d.fake.apps  # nothing was pushed


@pytest.mark.parametrize("value, message", [
    ("not base64!", "FLOPS_TLS_KEY_B64: expected base64url"),
    (pem_env.encode(b"no pem here"), "FLOPS_TLS_KEY_B64: the decoded value is not PEM text"),
    ("A", "FLOPS_TLS_KEY_B64: not valid base64url"),
])
def test_bad_pem_values_are_refused_with_the_variable_named(value, message):
    with pytest.raises(ConfigError, match=message):
        container.pem_files_from_b64({"FLOPS_TLS_KEY_B64": value})


def test_https_needs_both_files(tmp_path):
    crt = tmp_path / "a.crt"
    crt.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"FLOPS_TLS_KEY_FILE: cannot read the private key '.*nowhere.key' "
                                          r"\(FLOPS_TLS is true\)"):
        container.tls_files({"FLOPS_TLS": "true", "FLOPS_TLS_CERTIFICATE_FILE": str(crt),
                             "FLOPS_TLS_KEY_FILE": str(tmp_path / "nowhere.key")})
    assert container.tls_files({}) is None
