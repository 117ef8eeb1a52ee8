"""The read-only web dashboard (``[s3_proxy] dashboard_addr``) of a real ``enigma serve``.

The repository gets real backups from the real ``enigma backup`` CLI (while the server
runs) and objects over S3; the dashboard is then driven by Debian's headless Chromium
(log in, list, browse, download, providers, live progress) and by plain HTTP for the
security properties (sessions, forged cookies, path traversal, read-only).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from dashboard_support import Client, Dashboard, artifacts_dir, chromium, start_dashboard
from gateway_support import (
    ACCESS_KEY,
    OTHER_ACCESS_KEY,
    OTHER_SECRET_KEY,
    SECRET_KEY,
    Gateway,
    write_gateway_config,
)
from helpers import Enigma, assert_clean_error
from servers import free_port

from enigma.chunkstore import chunk_key
from enigma.manifest import BackupRecord, Manifest
from enigma.packs import pack_key

UNICODE_NAME = "ünï cødé 文件 🚀.txt"
#: A legal file name that would be markup if the pages did not escape it.
MARKUP_NAME = "<b>bold&'.txt"
#: Regular files in the source tree (what the backup's "files" count must say).
FILES = 8


@dataclass
class Setup:
    dashboard: Dashboard
    src: Path
    backup_id: str
    source: str  # the source's path inside the backup
    digests: dict[str, str]  # path relative to src -> sha256

    @property
    def manifest_path(self) -> Path:
        return self.dashboard.gateway.config_dir / "manifest.db"


def _tree(src: Path) -> dict[str, str]:
    """Files, a nested folder, a few MB of random data, a unicode name with spaces."""
    (src / "docs" / "nested" / "deeper").mkdir(parents=True)
    (src / "readme.txt").write_text("hello dashboard\n" * 500)
    (src / "notes.md").write_text("# notes\n")
    (src / "empty.txt").write_bytes(b"")
    (src / "docs" / "guide.txt").write_text("guide " * 4000)
    (src / "docs" / MARKUP_NAME).write_text("markup\n")
    (src / "docs" / "nested" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "docs" / "nested" / UNICODE_NAME).write_text("unicode name\n")
    (src / "docs" / "nested" / "deeper" / "copy.bin").write_bytes(os.urandom(200_000))
    (src / "link").symlink_to("readme.txt")
    return {str(p.relative_to(src)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in src.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("dashboard")
    src = root / "src"
    src.mkdir()
    digests = _tree(src)
    assert len(digests) == FILES
    dashboard = start_dashboard(root)
    try:
        gateway = dashboard.gateway
        s3 = gateway.client()
        s3.create_bucket(Bucket="dash")
        for number in range(2):
            s3.put_object(Bucket="dash", Key=f"object-{number}", Body=os.urandom(50_000))
        gateway.runner.ok("backup", str(src))  # into the repository the server serves
        with Manifest(gateway.config_dir / "manifest.db") as manifest:
            (backup,) = [b for b in manifest.list_backups() if str(src) in b.sources]
        yield Setup(dashboard, src, backup.id, str(src).lstrip("/"), digests)
    finally:
        dashboard.gateway.process.stop()


def _session(setup: Setup) -> Client:
    client = setup.dashboard.client()
    reply = client.login(ACCESS_KEY, SECRET_KEY)
    assert reply.status == 303, reply.text
    assert "enigma_session" in client.cookies
    return client


def _tree_url(setup: Setup, path: str) -> str:
    return f"/backups/{setup.backup_id}/tree/{quote(path)}"


def _file_url(setup: Setup, path: str) -> str:
    return f"/backups/{setup.backup_id}/file/{quote(path)}"


# -- in the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Any:
    with chromium() as launched:
        yield launched


def test_browser_login_browse_download(setup: Setup, browser: Any) -> None:
    base = setup.dashboard.url
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        page.goto(base + "/")
        assert page.url.startswith(base + "/login")

        page.fill("#access_key", ACCESS_KEY)
        page.fill("#secret_key", SECRET_KEY + "-wrong")
        with page.expect_response(lambda r: r.request.method == "POST") as refused:
            page.click("#login")
        assert refused.value.status == 401
        assert page.inner_text("#login-error") == "Wrong access key or secret key."
        assert "enigma_session" not in {c["name"] for c in context.cookies()}

        page.fill("#access_key", ACCESS_KEY)
        page.fill("#secret_key", SECRET_KEY)
        with page.expect_navigation():
            page.click("#login")
        assert page.url == base + "/"
        (cookie,) = [c for c in context.cookies() if c["name"] == "enigma_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        row = page.locator(f'tr[data-backup="{setup.backup_id}"]')
        assert row.locator('[data-field="status"]').inner_text() == "complete"
        assert row.locator('[data-field="files"]').inner_text() == str(FILES)
        assert "1.00×" in row.locator('[data-field="dedup"]').inner_text()  # unique data
        page.screenshot(path=str(artifacts_dir() / "dashboard-backups.png"), full_page=True)

        row.locator(f'a[href="/backups/{setup.backup_id}"]').click()
        page.wait_for_url(f"**/backups/{setup.backup_id}")
        assert page.inner_text("#backup-id") == setup.backup_id
        assert page.inner_text('[data-stat="files"]') == str(FILES)
        assert "finished" in page.inner_text("#log")

        page.click("a.source")  # straight to the backed-up folder
        page.wait_for_url("**/tree/**")
        _expect_names(page, ["docs/", "empty.txt", "link", "notes.md", "readme.txt"])
        assert "readme.txt" in page.inner_text('tr[data-name="link"]')  # the symlink target
        page.click('tr[data-name="docs"] a.entry')
        _expect_names(page, ["nested/", MARKUP_NAME, "guide.txt"])
        page.click('tr[data-name="nested"] a.entry')
        _expect_names(page, ["deeper/", "big.bin", UNICODE_NAME])
        assert page.locator("#crumbs a").all_inner_texts()[-1] == "docs"

        for name in ("big.bin", UNICODE_NAME):
            with page.expect_download() as started:
                page.click(f'tr[data-name="{name}"] a.download')
            download = started.value
            assert download.failure() is None
            assert download.suggested_filename == name
            data = Path(download.path()).read_bytes()
            assert hashlib.sha256(data).hexdigest() == setup.digests[f"docs/nested/{name}"]
        page.screenshot(path=str(artifacts_dir() / "dashboard-backup.png"), full_page=True)

        page.click("#crumbs a >> text=docs")  # breadcrumb back up
        _expect_names(page, ["nested/", MARKUP_NAME, "guide.txt"])

        page.click("header >> text=Providers")
        provider = page.locator('tr[data-provider="local"]')
        assert provider.locator('[data-field="health"]').inner_text() == "healthy"
        chunks = json.loads(setup.dashboard.gateway.runner.ok("status", "--json").out)["chunks"]
        assert provider.locator('[data-field="chunks"]').inner_text() == f"{chunks:,}"
        page.screenshot(path=str(artifacts_dir() / "dashboard-providers.png"), full_page=True)
        assert (artifacts_dir() / "dashboard-providers.png").stat().st_size > 1000

        page.click("header >> text=Cluster")
        assert "Single node" in page.inner_text("#single-node")

        page.click("#logout")
        page.wait_for_url("**/login")
        page.goto(base + "/providers")
        assert page.url.startswith(base + "/login")
    finally:
        context.close()


def _expect_names(page: Any, names: list[str]) -> None:
    """The folder listing shows exactly ``names`` (retried while a click navigates)."""
    from playwright.sync_api import expect

    expect(page.locator("#files .entry")).to_have_text(names)


def test_running_backup_shows_live_progress(setup: Setup, browser: Any) -> None:
    """A running backup (as ``enigma backup`` records it while it works) is listed with
    its partial stats, and the page refreshes itself when it finishes."""
    backup_id = os.urandom(8).hex()
    stats = {"files": 12, "bytes_total": 5_000_000, "bytes_read": 5_000_000,
             "bytes_new": 2_500_000, "bytes_stored": 1_250_000}
    with Manifest(setup.manifest_path) as manifest:
        manifest.begin_backup(BackupRecord(backup_id, time.time() - 5, ["/live/src"],
                                           "live-host", "running", stats=stats))
    client = _session(setup)
    (live,) = [b for b in json.loads(client.get("/api/running").text) if b["id"] == backup_id]
    assert live["cells"]["files"] == "12" and live["cells"]["status"] == "running"
    assert live["cells"]["dedup"] == "2.00×" and live["cells"]["compression"] == "2.00×"
    assert live["cells"]["bytes_total"] == "4.8 MiB"

    context = browser.new_context()
    context.add_cookies([{"name": "enigma_session", "value": client.cookies["enigma_session"],
                          "url": setup.dashboard.url}])
    page = context.new_page()
    try:
        page.goto(setup.dashboard.url + "/")
        row = f'tr[data-backup="{backup_id}"]'
        assert page.get_attribute(row, "data-running") == "1"
        assert page.inner_text(f'{row} [data-field="files"]') == "12"
        page.screenshot(path=str(artifacts_dir() / "dashboard-running.png"), full_page=True)
        with Manifest(setup.manifest_path) as manifest:  # what a running backup records
            manifest.backup_progress(backup_id, {**stats, "files": 17})
        page.wait_for_function(  # updated in place by live.js's polling, no reload
            "sel => document.querySelector(sel).textContent.trim() === '17'",
            arg=f'{row} [data-field="files"]', timeout=15_000)
        assert page.get_attribute(row, "data-running") == "1"
        with Manifest(setup.manifest_path) as manifest:
            manifest.finish_backup(backup_id, time.time(), "complete", {**stats, "files": 13})
        # live.js polls every 2 s and reloads the page when the running set changes.
        page.wait_for_selector(f"{row}:not([data-running])", timeout=15_000)
        assert page.inner_text(f'{row} [data-field="files"]') == "13"
        assert page.inner_text(f'{row} [data-field="status"]') == "complete"
    finally:
        context.close()
    assert backup_id not in client.get("/api/running").text


# -- over plain HTTP -----------------------------------------------------------------------


def _pages(setup: Setup) -> list[str]:
    return ["/", "/providers", "/cluster", f"/backups/{setup.backup_id}",
            _tree_url(setup, setup.source + "/docs"),
            _file_url(setup, setup.source + "/readme.txt")]


def test_every_page_needs_a_session(setup: Setup) -> None:
    anonymous = setup.dashboard.client()
    for path in _pages(setup):
        reply = anonymous.get(path)
        assert reply.status == 303, path
        assert reply.headers["Location"] == f"/login?next={quote(path, safe='')}"
        assert setup.backup_id not in reply.text
    assert anonymous.get("/api/running").status == 401

    valid = _session(setup).cookies["enigma_session"]
    payload, stamp, signature = valid.split(".")
    forged = [
        f"{payload}.{stamp}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
        # Another key id in a validly shaped token: the signature no longer matches.
        f"{payload.replace(payload[:6], 'eyJrIj')}x.{stamp}.{signature}",
        "garbage", "a.b.c", "",
    ]
    for cookie in forged:
        client = setup.dashboard.client()
        client.cookies["enigma_session"] = cookie
        assert client.get("/").status == 303, cookie
        assert client.get("/api/running").status == 401, cookie
    # A session signed by another server (another process's random key) is refused too.
    from itsdangerous import URLSafeTimedSerializer

    foreign = URLSafeTimedSerializer(os.urandom(32), salt="enigma-dashboard-session")
    client = setup.dashboard.client()
    client.cookies["enigma_session"] = foreign.dumps({"k": ACCESS_KEY, "s": "0" * 32})
    assert client.get("/").status == 303


def test_pages_render_with_a_session_and_nothing_writes(setup: Setup) -> None:
    client = _session(setup)
    for path in _pages(setup):
        reply = client.get(path)
        assert reply.status == 200, (path, reply.text[:300])
        assert reply.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
    readme = client.get(_file_url(setup, setup.source + "/readme.txt"))
    assert hashlib.sha256(readme.body).hexdigest() == setup.digests["readme.txt"]
    assert readme.headers["Content-Disposition"] == \
        "attachment; filename=\"readme.txt\"; filename*=UTF-8''readme.txt"
    assert readme.headers["Content-Length"] == str(len(readme.body))
    unicode = client.get(_file_url(setup, f"{setup.source}/docs/nested/{UNICODE_NAME}"))
    assert unicode.headers["Content-Disposition"].endswith(
        "filename*=UTF-8''" + quote(UNICODE_NAME, safe=""))
    head = client.request("HEAD", _file_url(setup, setup.source + "/docs/nested/big.bin"))
    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(3 * 1024 * 1024 + 17)
    docs = client.get(_tree_url(setup, setup.source + "/docs")).text
    assert "&lt;b&gt;bold&amp;&#39;.txt" in docs and "<b>" not in docs  # escaped
    markup = client.get(_file_url(setup, f"{setup.source}/docs/{MARKUP_NAME}"))
    assert markup.body == b"markup\n"
    assert markup.headers["Content-Disposition"].startswith('attachment; filename="')
    empty = client.get(_file_url(setup, setup.source + "/empty.txt"))
    assert (empty.status, empty.body, empty.headers["Content-Length"]) == (200, b"", "0")
    # Read-only: no method but GET (and the login POST) is routed anywhere.
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", f"/backups/{setup.backup_id}", "/providers"):
            assert client.request(method, path).status == 405, (method, path)
    with Manifest(setup.manifest_path) as manifest:
        assert setup.backup_id in {b.id for b in manifest.list_backups()}
    # The other key pair logs in too (each pair of the gateway does).
    other = setup.dashboard.client()
    assert other.login(OTHER_ACCESS_KEY, OTHER_SECRET_KEY).status == 303
    assert other.get("/").status == 200


def test_failed_logins_say_nothing_and_get_no_session(setup: Setup) -> None:
    bodies = []
    for access, secret in ((ACCESS_KEY, "wrong"), ("NOSUCHKEY", SECRET_KEY), ("", "")):
        client = setup.dashboard.client()
        reply = client.login(access, secret)
        assert reply.status == 401
        assert "enigma_session" not in client.cookies
        assert 'id="login-error"' in reply.text
        bodies.append(reply.text.split('id="login-error">')[1].split("<")[0])
    assert len(set(bodies)) == 1  # no hint about which part was wrong
    # A post without the form's token (another site posting) is refused, right secret or not.
    client = setup.dashboard.client()
    reply = client.post_form("/login", {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY,
                                        "token": "made-up"})
    assert reply.status == 400 and "enigma_session" not in client.cookies
    # After login only local destinations: no open redirect.
    for wanted, landed in (("//evil.example/", "/"), ("https://evil.example/", "/"),
                           ("/providers", "/providers")):
        reply = setup.dashboard.client().login(ACCESS_KEY, SECRET_KEY, wanted)
        assert (reply.status, reply.headers["Location"]) == (303, landed)
    cookie = next(c for c in reply.set_cookies() if c.startswith("enigma_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie


def test_logout_revokes_the_session(setup: Setup) -> None:
    client = _session(setup)
    token = client.cookies["enigma_session"]
    assert client.get("/").status == 200
    reply = client.get("/logout")
    assert (reply.status, reply.headers["Location"]) == (303, "/login")
    assert "enigma_session" not in client.cookies
    client.cookies["enigma_session"] = token  # replaying the old cookie does not help
    assert client.get("/").status == 303


def test_path_traversal_is_harmless(setup: Setup) -> None:
    client = _session(setup)
    base = f"/backups/{setup.backup_id}"
    secret_file = setup.src.parent / "serve.log"  # a real file next to the repository
    for raw in (f"/file/{setup.source}/../../serve.log", "/file/../../../../etc/passwd",
                f"/file/{setup.source}/%2e%2e/%2e%2e/serve.log", "/tree/..",
                f"/tree/{setup.source}/./docs", f"/file/{setup.source}//readme.txt",
                "/file/%2Fetc%2Fpasswd", f"/tree/{setup.source}/docs%2F..%2F..",
                f"/file/{setup.source}/docs"):  # a folder is no file to download
        reply = client.get(base + raw)
        assert reply.status == 404, raw
        assert "root:" not in reply.text and "listening on" not in reply.text
        assert reply.headers["Content-Type"].startswith("text/html")
    assert secret_file.exists()
    assert client.get(f"/backups/{'0' * 16}").status == 404
    assert client.get("/api/running").status == 200  # the session still works


def test_damaged_chunk_is_an_error_page_not_wrong_bytes(setup: Setup) -> None:
    """A download whose chunk fails authentication answers 500 with the reason in one
    line, before any byte of the file is sent. The chunk (30 kB) sits in a pack, as
    small chunks do by default: one byte of it is flipped there."""
    gateway = setup.dashboard.gateway
    extra = setup.src.parent / "extra"
    extra.mkdir()
    (extra / "victim.bin").write_bytes(os.urandom(30_000))
    gateway.runner.ok("backup", str(extra))
    with Manifest(setup.manifest_path) as manifest:
        (backup,) = [b for b in manifest.list_backups() if str(extra) in b.sources]
        (entry,) = [e for e in manifest.iter_files(backup.id) if e.path.endswith("victim.bin")]
        (ref,) = entry.chunks
        record = manifest.get_chunk(ref.chunk_id)
    assert record is not None and record.pack is not None
    storage = gateway.config_dir / "storage"
    assert not (storage / chunk_key(record.id)).exists()
    path = storage / pack_key(record.pack)
    damaged = bytearray(path.read_bytes())
    damaged[record.offset + record.stored_size // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    client = _session(setup)
    reply = client.get(f"/backups/{backup.id}/file/{quote(str(extra).lstrip('/'))}/victim.bin")
    assert reply.status == 500
    assert reply.headers["Content-Type"].startswith("text/html")
    message = reply.text.split('id="error-message">')[1].split("<")[0]
    assert message and "\n" not in message and "Traceback" not in reply.text
    assert "Traceback" not in setup.dashboard.log.read_text()


def test_s3_port_never_serves_the_dashboard(setup: Setup, gateway: Gateway) -> None:
    """The dashboard has its own port; without ``dashboard_addr`` there is none at all."""
    import urllib.error
    import urllib.request

    for url in (setup.dashboard.gateway.url, gateway.url):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/login", timeout=10)
        assert refused.value.code == 403  # S3's AccessDenied for an anonymous request
        assert b"<Code>AccessDenied</Code>" in refused.value.read()
    log = (gateway.config_dir.parent / "serve.log").read_text()
    assert "listening on" in log and "dashboard" not in log


def test_https_session_expires_and_sigterm_stops_both_servers(tmp_path: Path) -> None:
    """With tls_cert/tls_key the dashboard serves HTTPS too and its cookies are Secure."""
    from test_tls import self_signed

    cert, key = self_signed(tmp_path)
    dashboard = start_dashboard(tmp_path, f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
                                          'dashboard_session = "1s"\n', cafile=cert)
    try:
        client = dashboard.client()
        reply = client.login(ACCESS_KEY, SECRET_KEY)
        assert reply.status == 303
        cookie = next(c for c in reply.set_cookies() if c.startswith("enigma_session="))
        assert "Secure" in cookie and "HttpOnly" in cookie
        with pytest.raises(OSError):  # no plain HTTP beside it
            Client(dashboard.port).get("/login")
        started = time.monotonic()
        assert client.get("/").status == 200  # valid right after login
        while client.get("/").status == 200:  # itsdangerous counts whole seconds
            assert time.monotonic() - started < 10, "the session never expired"
            time.sleep(0.2)
        assert client.get("/api/running").status == 401
        process = dashboard.gateway.process.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert "Traceback" not in dashboard.log.read_text()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", dashboard.port), timeout=1).close()
    finally:
        dashboard.gateway.process.stop()


def test_cluster_page_shows_the_raft_state(tmp_path: Path) -> None:
    """A one-member Raft cluster (enigma-raft): the page shows this node leading."""
    pytest.importorskip("enigma_raft")
    shared = f'[[providers]]\nname = "local"\ntype = "Local"\n' \
             f'path = "{tmp_path / "config" / "storage"}"\nshared = true\n'
    raft = f'[raft]\nnode_id = "n1"\n[[raft.peers]]\nid = "n1"\n' \
           f'addr = "127.0.0.1:{free_port()}"\n'
    dashboard = start_dashboard(tmp_path, shared + raft)
    try:
        client = dashboard.client()
        assert client.login(ACCESS_KEY, SECRET_KEY).status == 303
        deadline = time.monotonic() + 20
        while 'id="role">leader<' not in (page := client.get("/cluster")).text:
            assert time.monotonic() < deadline, page.text[-2000:]
            time.sleep(0.2)
        assert page.status == 200
        commit = int(page.text.split('id="commit-index">')[1].split("<")[0])
        applied = int(page.text.split('id="applied">')[1].split("<")[0])
        term = int(page.text.split('id="term">')[1].split("<")[0])
        assert term >= 1 and commit >= 1 and 0 <= commit - applied <= commit
        assert 'id="no-peers"' in page.text and "Single node" not in page.text
        assert client.get("/").status == 200  # reads go through the Raft read barrier
    finally:
        dashboard.gateway.process.stop()


def test_bad_dashboard_settings_are_one_line(tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "c")
    runner.ok("init")
    config = runner.config_dir / "enigma.toml"
    write_gateway_config(runner, free_port())
    base = config.read_text()
    config.write_text(base + 'dashboard_addr = "nope"\n')
    assert_clean_error(runner("serve", timeout=60), "dashboard_addr", "HOST:PORT")
    config.write_text(base + 'dashboard_addr = 8334\n')
    assert_clean_error(runner("serve", timeout=60), "dashboard_addr", "string")
    config.write_text(base + 'dashboard_session = "0"\n')
    assert_clean_error(runner("serve", timeout=60), "dashboard_session")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config.write_text(base + f'dashboard_addr = "127.0.0.1:{taken.getsockname()[1]}"\n')
        assert_clean_error(runner("serve", timeout=60), "dashboard_addr", "cannot listen")
