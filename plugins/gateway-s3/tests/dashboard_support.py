"""Helpers for test_dashboard.py: a real ``enigma serve`` with the dashboard on, a plain
HTTP client that keeps cookies and never follows redirects, and Debian's headless Chromium
driven by playwright (never a downloaded browser).
"""

from __future__ import annotations

import http.client
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from gateway_support import Gateway, port_open, start_gateway
from servers import free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
#: The machine's closed network: nothing in the background may try to reach out.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[3]


@dataclass
class Dashboard:
    gateway: Gateway
    port: int
    log: Path
    #: Trusts the gateway's certificate when it serves HTTPS (None: plain HTTP).
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client(self) -> Client:
        return Client(self.port, self.tls)


def start_dashboard(root: Path, extra: str = "", cafile: Path | None = None) -> Dashboard:
    """A gateway over a fresh repository with ``dashboard_addr`` on a free port (HTTPS
    when ``extra`` sets tls_cert and tls_key, ``cafile`` being that certificate)."""
    port = free_port()
    gateway = start_gateway(root, f'dashboard_addr = "127.0.0.1:{port}"\n{extra}',
                            "https" if cafile else "http")
    try:
        wait_until(lambda: port_open(port), timeout=30, what="the dashboard",
                   process=gateway.process.process, log=root / "serve.log")
    except BaseException:
        gateway.process.stop()
        raise
    tls = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    return Dashboard(gateway, port, root / "serve.log", tls)


@dataclass
class Reply:
    status: int
    headers: Any  # http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


class Client:
    """HTTP/1.1 to the dashboard, one connection per request, cookies kept by name."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        conn = (http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30,
                                            context=self.tls) if self.tls
                else http.client.HTTPConnection("127.0.0.1", self.port, timeout=30))
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        finally:
            conn.close()
        for line in reply.set_cookies():
            for name, morsel in SimpleCookie(line).items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post_form(self, path: str, fields: dict[str, str]) -> Reply:
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def login(self, access_key: str, secret_key: str, next_url: str = "/") -> Reply:
        """The browser's way: fetch the form (its token cookie), then post it."""
        form = self.get("/login")
        assert form.status == 200, form.status
        token = self.cookies["enigma_login"]
        assert f'value="{token}"' in form.text  # the hidden field carries the same token
        return self.post_form("/login", {"access_key": access_key, "secret_key": secret_key,
                                         "token": token, "next": next_url})


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser; missing Chromium fails under CI and skips elsewhere."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (Debian package chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def artifacts_dir() -> Path:
    """Where screenshots go: ``$ENIGMA_TEST_ARTIFACTS`` or ``<repo>/test-artifacts``."""
    path = Path(os.environ.get("ENIGMA_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
