"""Loopback fakes of Azure Key Vault and GCP Secret Manager, and a moto server runner.

The fakes answer the real SDK clients over real HTTP(S), following each service's
documented REST API closely enough that the SDKs parse every answer as they would the
service's: Key Vault's secrets API (with its 401 bearer challenge and an App Service
managed-identity token endpoint) over TLS, and Secret Manager's v1 REST API (with an OAuth
token endpoint). State lives in memory; tests inspect and tamper with it directly.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from enigma_keys_vault.gcp import crc32c

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
KV_CHALLENGE = (f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                'resource="https://vault.azure.net"')


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- TLS


@dataclass
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> TlsFiles:
    """Create a CA and a 127.0.0.1/localhost server certificate (valid for a day)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enigma test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


# --------------------------------------------------------------------------- server base


class _Handler(BaseHTTPRequestHandler):
    """JSON in, JSON out, HTTP/1.1 keep-alive, quiet."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        """The request body, read once (every request's body is drained before replying)."""
        if getattr(self, "_raw", None) is None:
            length = int(self.headers.get("Content-Length") or 0)
            self._raw = self.rfile.read(length) if length else b""
        return self._raw

    def handle_one_request(self) -> None:
        self._raw = None
        super().handle_one_request()

    def json_body(self) -> Any:
        raw = self.body()
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return None

    def reply(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.server.log.append((self.command, self.path, status,
                                bool(self.headers.get("Authorization"))))

    def do_GET(self) -> None:
        self.body()
        self.server.dispatch(self)

    do_PUT = do_POST = do_DELETE = do_PATCH = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: TlsFiles | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        #: (method, path, status, had Authorization) of every request answered.
        self.log: list[tuple[str, str, int, bool]] = []
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def start(self) -> _Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-handshake are not the test's business

    def dispatch(self, handler: _Handler) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- Azure Key Vault


@dataclass
class KvVersion:
    version: str
    value: str
    content_type: str | None
    tags: dict[str, str]
    created: int


class FakeKeyVault(_Server):
    """Key Vault's secrets REST API (api-version 7.x) with bearer challenges, over TLS.

    Also answers the App Service managed-identity token endpoint at ``/msi/token`` so
    ``DefaultAzureCredential`` works unmodified in a subprocess (``IDENTITY_ENDPOINT`` and
    ``IDENTITY_HEADER`` are how App Service announces it).
    """

    NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")

    def __init__(self, tls: TlsFiles) -> None:
        super().__init__(tls)
        self.secrets: dict[str, list[KvVersion]] = {}
        self.deleted: set[str] = set()
        self.tokens: set[str] = set()
        self.identity_header = uuid.uuid4().hex
        #: When true, every secrets call is refused with 403 (an RBAC denial).
        self.deny = False
        self.challenges = 0

    # -- test helpers ----------------------------------------------------------------------

    def soft_delete(self, name: str) -> None:
        """What ``az keyvault secret delete`` does with soft delete on (the default)."""
        with self.lock:
            self.secrets.pop(name, None)
            self.deleted.add(name)

    def purge_version(self, name: str, version: str) -> None:
        with self.lock:
            self.secrets[name] = [v for v in self.secrets[name] if v.version != version]

    # -- HTTP ------------------------------------------------------------------------------

    def dispatch(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        path = unquote(url.path)
        if path == "/msi/token":
            return self._msi_token(h, query)
        match = re.fullmatch(r"/secrets/([^/]+)(?:/([^/]*))?/?", path)
        if not match:
            return h.reply(404, {"error": {"code": "NotFound",
                                           "message": f"Unknown path {path}"}})
        if not query.get("api-version"):
            return h.reply(400, {"error": {"code": "BadParameter", "message":
                                           "The 'api-version' query parameter is required."}})
        auth = h.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            with self.lock:
                self.challenges += 1
            message = ("AKV10000: Request is missing a Bearer or PoP token." if not auth else
                       "AKV10032: Invalid issuer.")
            return h.reply(401, {"error": {"code": "Unauthorized", "message": message}},
                           {"WWW-Authenticate": KV_CHALLENGE})
        if self.deny:
            return h.reply(403, {"error": {
                "code": "Forbidden",
                "message": "Caller is not authorized to perform action on resource. "
                           "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'",
                "innererror": {"code": "ForbiddenByRbac"}}})
        name, rest = match.group(1), match.group(2) or ""
        base = f"https://{h.headers.get('Host', '127.0.0.1')}"
        if not self.NAME.match(name):
            return h.reply(400, {"error": {"code": "BadParameter", "message":
                                           f"The request URI contains an invalid name: {name}"}})
        if h.command == "PUT" and not rest:
            return self._set(h, base, name)
        if h.command == "GET" and rest == "versions":
            return self._versions(h, base, name, query)
        if h.command == "GET":
            return self._get(h, base, name, rest)
        h.reply(405, {"error": {"code": "MethodNotAllowed", "message": h.command}})

    def _msi_token(self, h: _Handler, query: dict[str, list[str]]) -> None:
        if h.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return h.reply(401, {"statusCode": 401, "message": "Unauthorized request"})
        resource = (query.get("resource") or [""])[0]
        token = f"msi-{uuid.uuid4().hex}"
        with self.lock:
            self.tokens.add(token)
        h.reply(200, {"access_token": token, "expires_on": str(int(time.time()) + 3600),
                      "resource": resource, "token_type": "Bearer",
                      "client_id": "00000000-0000-0000-0000-000000000001"})

    def _bundle(self, base: str, name: str, v: KvVersion, value: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": f"{base}/secrets/{name}/{v.version}",
            "attributes": {"enabled": True, "created": v.created, "updated": v.created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
            "tags": v.tags,
        }
        if v.content_type:
            doc["contentType"] = v.content_type
        if value:
            doc["value"] = v.value
        return doc

    def _not_found(self, h: _Handler, name: str) -> None:
        h.reply(404, {"error": {"code": "SecretNotFound", "message":
                                f"A secret with (name/id) {name} was not found in this key "
                                "vault. If you recently deleted this secret you may be able to "
                                "recover it using the correct recovery command."}})

    def _set(self, h: _Handler, base: str, name: str) -> None:
        doc = h.json_body()
        if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
            return h.reply(400, {"error": {"code": "BadParameter",
                                           "message": "Property 'value' is required."}})
        with self.lock:
            if name in self.deleted:
                return h.reply(409, {"error": {
                    "code": "Conflict",
                    "message": f"Secret {name} is currently in a deleted but recoverable "
                               "state, and its name cannot be reused; in this state, the "
                               "secret can only be recovered or purged.",
                    "innererror": {"code": "ObjectIsDeletedButRecoverable"}}})
            version = KvVersion(uuid.uuid4().hex, doc["value"], doc.get("contentType"),
                                dict(doc.get("tags") or {}), int(time.time()))
            self.secrets.setdefault(name, []).append(version)
        h.reply(200, self._bundle(base, name, version))

    def _get(self, h: _Handler, base: str, name: str, version: str) -> None:
        with self.lock:
            versions = list(self.secrets.get(name, []))
        found = [v for v in versions if v.version == version] if version else versions[-1:]
        if not found:
            return self._not_found(h, name)
        h.reply(200, self._bundle(base, name, found[0]))

    def _versions(self, h: _Handler, base: str, name: str, query: dict[str, list[str]]) -> None:
        with self.lock:
            versions = list(self.secrets.get(name, []))
        if not versions:
            return self._not_found(h, name)
        size = min(int((query.get("maxresults") or ["25"])[0]), 25)
        skip = int((query.get("$skiptoken") or ["0"])[0])
        page = versions[skip: skip + size]
        more = skip + size < len(versions)
        api = query["api-version"][0]
        h.reply(200, {
            "value": [self._bundle(base, name, v, value=False) for v in page],
            "nextLink": (f"{base}/secrets/{name}/versions?api-version={api}&maxresults={size}"
                         f"&$skiptoken={skip + size}") if more else None,
        })


class FakeAzureCredential:
    """The azure-core token credential protocol, answering with a token the fake accepts."""

    def __init__(self, vault: FakeKeyVault) -> None:
        self.token = f"cred-{uuid.uuid4().hex}"
        vault.tokens.add(self.token)
        self.calls: list[tuple[tuple[str, ...], str | None]] = []

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.calls.append((scopes, tenant_id))
        return AccessToken(self.token, int(time.time()) + 3600)


# --------------------------------------------------------------------------- GCP Secret Manager


@dataclass
class SmVersion:
    number: int
    data: bytes
    created: float
    checksum: bool


@dataclass
class SmSecret:
    labels: dict[str, str]
    created: float
    versions: list[SmVersion] = field(default_factory=list)


class FakeSecretManager(_Server):
    """Secret Manager's v1 REST API (what ``transport="rest"`` calls) plus an OAuth token URI.

    Project ``denied-project`` answers 403 to everything; requests without a bearer token
    get 401, as the real service does.
    """

    SECRET_ID = re.compile(r"^[a-zA-Z0-9_-]{1,255}$")

    def __init__(self) -> None:
        super().__init__()
        self.projects: dict[str, dict[str, SmSecret]] = {}
        self.tokens_issued = 0

    def number(self, project: str) -> int:
        """Real resource names carry the project *number*; fake a stable one."""
        return 100000000000 + zlib.crc32(project.encode()) % 900000000000

    def error(self, h: _Handler, code: int, status: str, message: str) -> None:
        h.reply(code, {"error": {"code": code, "message": message, "status": status}})

    def dispatch(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        path = unquote(url.path)
        if path == "/token" and h.command == "POST":
            with self.lock:
                self.tokens_issued += 1
            return h.reply(200, {"access_token": f"ya29.fake-{uuid.uuid4().hex}",
                                 "expires_in": 3599, "token_type": "Bearer"})
        body = h.json_body()
        match = re.fullmatch(r"/v1/projects/([^/]+)/secrets(?:/([^/:]+))?"
                             r"(?::(addVersion)|/versions(?:/([^/:]+)(?::(access))?)?)?", path)
        if not match:
            return self.error(h, 404, "NOT_FOUND", f"Unknown path {path}")
        auth = h.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) < 12:
            return self.error(h, 401, "UNAUTHENTICATED",
                              "Request is missing required authentication credential. Expected "
                              "OAuth 2 access token, login cookie or other valid authentication "
                              "credential.")
        project, secret_id, add, version, access = match.groups()
        if project == "denied-project":
            return self.error(h, 403, "PERMISSION_DENIED", "Permission 'secretmanager.versions."
                              "access' denied for resource (or it may not exist).")
        ints = "enum-encoding=int" in ";".join(query.get("$alt", []))
        prefix = f"projects/{self.number(project)}/secrets"
        with self.lock:
            secrets = self.projects.setdefault(project, {})
            if secret_id is None:
                if h.command != "POST":
                    return self.error(h, 405, "UNIMPLEMENTED", "listing secrets is not faked")
                return self._create(h, prefix, secrets, (query.get("secretId") or [""])[0], body)
            secret = secrets.get(secret_id)
            name = f"{prefix}/{secret_id}"
            if add:
                if secret is None:
                    return self.error(h, 404, "NOT_FOUND", f"Secret [{name}] not found or has "
                                      "no versions.")
                return self._add(h, name, secret, body, ints)
            if version is None and "/versions" not in path:
                if secret is None:
                    return self.error(h, 404, "NOT_FOUND", f"Secret [{name}] not found.")
                if h.command == "DELETE":
                    del secrets[secret_id]
                    return h.reply(200, {})
                return h.reply(200, self._secret_doc(name, secret))
            if secret is None:
                return self.error(h, 404, "NOT_FOUND", f"Secret [{name}] not found.")
            if version is None:
                return self._list(h, name, secret, query, ints)
            if version == "latest":
                chosen = secret.versions[-1:]
            else:
                chosen = [v for v in secret.versions if str(v.number) == version]
            if not chosen:
                return self.error(h, 404, "NOT_FOUND",
                                  f"Secret Version [{name}/versions/{version}] not found.")
            v = chosen[0]
            if access:
                return h.reply(200, {"name": f"{name}/versions/{v.number}", "payload": {
                    "data": base64.b64encode(v.data).decode(), "dataCrc32c": str(crc32c(v.data))}})
            return h.reply(200, self._version_doc(name, v, ints))

    def _secret_doc(self, name: str, secret: SmSecret) -> dict[str, Any]:
        return {"name": name, "replication": {"automatic": {}},
                "createTime": _rfc3339(secret.created), "labels": secret.labels,
                "etag": f'"{uuid.uuid4().hex[:14]}"'}

    def _version_doc(self, name: str, v: SmVersion, ints: bool) -> dict[str, Any]:
        return {"name": f"{name}/versions/{v.number}", "createTime": _rfc3339(v.created),
                "state": 1 if ints else "ENABLED", "replicationStatus": {"automatic": {}},
                "etag": f'"{uuid.uuid4().hex[:14]}"', "clientSpecifiedPayloadChecksum": v.checksum}

    def _create(self, h: _Handler, prefix: str, secrets: dict[str, SmSecret], secret_id: str,
                body: Any) -> None:
        if not self.SECRET_ID.match(secret_id):
            return self.error(h, 400, "INVALID_ARGUMENT", "Invalid secret id: must match "
                              "[a-zA-Z0-9_-]{1,255}.")
        if not isinstance(body, dict) or not body.get("replication"):
            return self.error(h, 400, "INVALID_ARGUMENT", "Secret.replication is required.")
        if secret_id in secrets:
            return self.error(h, 409, "ALREADY_EXISTS",
                              f"Secret [{prefix}/{secret_id}] already exists.")
        secret = SmSecret(dict(body.get("labels") or {}), time.time())
        secrets[secret_id] = secret
        h.reply(200, self._secret_doc(f"{prefix}/{secret_id}", secret))

    def _add(self, h: _Handler, name: str, secret: SmSecret, body: Any, ints: bool) -> None:
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, dict):
            return self.error(h, 400, "INVALID_ARGUMENT", "Payload is required.")
        data = base64.b64decode(payload.get("data", ""))
        checksum = payload.get("dataCrc32c")
        if checksum is not None and int(checksum) != crc32c(data):
            return self.error(h, 400, "INVALID_ARGUMENT", "Checksum mismatch: the payload "
                              "data_crc32c does not match the payload.")
        v = SmVersion(len(secret.versions) + 1, data, time.time(), checksum is not None)
        secret.versions.append(v)
        h.reply(200, self._version_doc(name, v, ints))

    def _list(self, h: _Handler, name: str, secret: SmSecret, query: dict[str, list[str]],
              ints: bool) -> None:
        newest_first = list(reversed(secret.versions))
        size = int((query.get("pageSize") or ["25"])[0])
        start = int((query.get("pageToken") or ["0"])[0])
        page = newest_first[start: start + size]
        doc: dict[str, Any] = {"versions": [self._version_doc(name, v, ints) for v in page],
                               "totalSize": len(newest_first)}
        if start + size < len(newest_first):
            doc["nextPageToken"] = str(start + size)
        h.reply(200, doc)


def service_account_file(path: Path, token_uri: str, project: str = "enigma-test") -> Path:
    """A service account key file (fresh RSA key) whose token URI is the fake's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": uuid.uuid4().hex,
        "private_key": pem, "client_email": f"enigma@{project}.iam.gserviceaccount.com",
        "client_id": "100000000000000000001", "token_uri": token_uri,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "universe_domain": "googleapis.com",
    }))
    return path


# --------------------------------------------------------------------------- moto


@contextlib.contextmanager
def moto_server(timeout: float = 30.0) -> Iterator[str]:
    """Run ``python -m moto.server`` on a free loopback port; yield its URL; stop it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"moto server exited with {proc.returncode}: {tail}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("moto server did not start in time") from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
