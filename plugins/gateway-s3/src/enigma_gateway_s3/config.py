"""The ``[s3_proxy]`` table: address, key pairs, region, domain, TLS, upload expiry,
metrics address, manifest snapshot interval, dashboard address and session lifetime."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enigma.errors import ConfigError

DEFAULT_LISTEN = "0.0.0.0:8333"
DEFAULT_REGION = "us-east-1"
#: Keys whose value must be a string.
STRINGS = ("listen_addr", "access_key", "secret_key", "default_region", "domain", "tls_cert",
           "tls_key", "metrics_addr", "dashboard_addr")
KNOWN = (*STRINGS, "multipart_expiry", "snapshot_interval", "dashboard_session", "keys")
DEFAULT_EXPIRY = 7 * 24 * 3600
DEFAULT_SNAPSHOT_INTERVAL = 3600
DEFAULT_DASHBOARD_SESSION = 12 * 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class GatewayOptions:
    host: str
    port: int
    credentials: dict[str, str]  # access key -> secret key (revealed)
    region: str
    #: Host names under which ``<bucket>.<domain>`` addresses a bucket (virtual-host style).
    domains: tuple[str, ...] = ()
    #: PEM certificate chain and private key: serve HTTPS instead of HTTP.
    tls_cert: str = ""
    tls_key: str = ""
    #: Seconds after which an unfinished multipart upload is discarded (0: never).
    multipart_expiry: float = DEFAULT_EXPIRY
    #: (host, port) of the Prometheus ``/metrics`` endpoint; None: no endpoint.
    metrics: tuple[str, int] | None = None
    #: Seconds between encrypted manifest snapshots stored in the backends (written only
    #: when the manifest changed; 0: none).
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL
    #: (host, port) of the read-only web dashboard; None: no dashboard (the default).
    dashboard: tuple[str, int] | None = None
    #: Seconds a dashboard login stays valid.
    dashboard_session: float = DEFAULT_DASHBOARD_SESSION

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def parse_options(options: dict[str, Any], where: Callable[[str | None], str],
                  reveal: Callable[[Any], Any],
                  resolve: Callable[[str], Path] = Path) -> GatewayOptions:
    """Validate the table; ``where(key)`` locates a key for messages, ``reveal`` decrypts
    ``enc:`` tokens, ``resolve`` makes config paths absolute."""
    for key in options:
        if key not in KNOWN:
            raise ConfigError(f"{where(key)}: unknown key (known: {', '.join(KNOWN)})")
    for key in STRINGS:
        if key in options and not isinstance(options[key], str):
            raise ConfigError(f"{where(key)}: must be a string")
    host, port = _address(options.get("listen_addr", DEFAULT_LISTEN),
                          lambda: where("listen_addr"), DEFAULT_LISTEN)
    metrics_addr = options.get("metrics_addr", "")  # empty or absent: no metrics endpoint
    metrics = (_address(metrics_addr, lambda: where("metrics_addr"), "127.0.0.1:9333")
               if metrics_addr else None)
    dashboard_addr = options.get("dashboard_addr", "")  # empty or absent: no dashboard
    dashboard = (_address(dashboard_addr, lambda: where("dashboard_addr"), "127.0.0.1:8334")
                 if dashboard_addr else None)
    access = options.get("access_key", "")
    secret = options.get("secret_key", "")
    if not access or not secret:
        missing = "access_key" if not access else "secret_key"
        raise ConfigError(f"{where(missing)}: required (the gateway never serves anonymously)")
    credentials = {reveal(access): reveal(secret)}
    extra = options.get("keys", [])
    if not isinstance(extra, list) or not all(isinstance(t, dict) for t in extra):
        raise ConfigError(f"{where('keys')}: must be an array of tables "
                          "([[s3_proxy.keys]] with access_key and secret_key)")
    for number, table in enumerate(extra, 1):
        unknown = sorted(set(table) - {"access_key", "secret_key"})
        if unknown:
            raise ConfigError(f"{where('keys')} #{number}: unknown key '{unknown[0]}' "
                              "(known: access_key, secret_key)")
        pair = [table.get("access_key"), table.get("secret_key")]
        if not all(isinstance(v, str) and v for v in pair):
            raise ConfigError(f"{where('keys')} #{number}: needs access_key and secret_key "
                              "(strings)")
        access_key = reveal(pair[0])
        if access_key in credentials:
            raise ConfigError(f"{where('keys')} #{number}: access key {access_key!r} is "
                              "configured twice")
        credentials[access_key] = reveal(pair[1])
    region = options.get("default_region", DEFAULT_REGION) or DEFAULT_REGION
    domains = tuple(d.strip().lower().strip(".") for d in options.get("domain", "").split(",")
                    if d.strip())
    cert, key = options.get("tls_cert", ""), options.get("tls_key", "")
    if bool(cert) != bool(key):
        raise ConfigError(f"{where('tls_key' if cert else 'tls_cert')}: tls_cert and tls_key "
                          "go together")
    if cert:
        cert, key = str(resolve(cert)), str(resolve(key))
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where('tls_cert')}: cannot load the certificate and key: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    expiry = _duration(options.get("multipart_expiry", DEFAULT_EXPIRY),
                       lambda: where("multipart_expiry"))
    snapshots = _duration(options.get("snapshot_interval", DEFAULT_SNAPSHOT_INTERVAL),
                          lambda: where("snapshot_interval"), "0 stores none")
    session = _duration(options.get("dashboard_session", DEFAULT_DASHBOARD_SESSION),
                        lambda: where("dashboard_session"), "0 is not allowed")
    if session <= 0:
        raise ConfigError(f"{where('dashboard_session')}: must be more than 0 (e.g. \"12h\")")
    return GatewayOptions(host, port, credentials, region, domains, cert, key, expiry,
                          metrics, snapshots, dashboard, session)


def _address(value: str, where: Callable[[], str], example: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" or "[IPv6]:PORT"; resolving waits for the bind."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where()}: must be HOST:PORT, e.g. {example}")
    return host, int(port_text)


def _duration(value: Any, where: Callable[[], str],
              zero: str = "0 keeps uploads forever") -> float:
    """Seconds from an integer or a string like "90s", "30m", "12h", "7d"; ``zero`` says
    what 0 means, for the error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and value[:-1].isdigit() and value[-1:] in _UNITS:
        return float(int(value[:-1]) * _UNITS[value[-1]])
    raise ConfigError(f"{where()}: must be a number of seconds or a duration like \"7d\", "
                      f"\"12h\", \"30m\", \"90s\" ({zero})")
