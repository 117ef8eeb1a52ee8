"""``S3Gateway``: the ``Server`` that ``enigma serve`` starts when ``[s3_proxy]`` exists."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, ClassVar

from enigma.errors import ConfigError
from enigma.interfaces import Server
from enigma.periodic import Periodic
from enigma_gateway_s3.config import parse_options

#: Seconds between hand-backs of freed memory while the server idles (enigma.memory).
TRIM_INTERVAL = 5.0
#: Longest wait at shutdown for a snapshot in progress before the final one.
SNAPSHOT_JOIN_SECONDS = 60.0


class S3Gateway(Server):
    """Serves the repository as S3 on uvicorn until SIGINT or SIGTERM."""

    name: ClassVar[str] = "s3"
    config_table: ClassVar[str] = "s3_proxy"
    description: ClassVar[str] = "S3-compatible gateway (boto3, aws-cli, rclone, s3cmd)"

    def serve(self, repository: Any, options: dict[str, Any]) -> None:
        import uvicorn

        from enigma_gateway_s3.app import S3App
        from enigma_gateway_s3.multipart import Sweeper
        from enigma_gateway_s3.store import ObjectStore

        config = repository.config
        parsed = parse_options(options, lambda key: config.where(self.config_table, key),
                               repository.reveal, config.resolve)
        with ExitStack() as cleanup:
            # Every address is bound before the keys are unlocked: a taken port fails fast.
            sock = _bind(parsed.host, parsed.port,
                         lambda: config.where(self.config_table, "listen_addr"))
            cleanup.callback(sock.close)
            dashboard_sock = None
            if parsed.dashboard is not None:
                dashboard_sock = _bind(*parsed.dashboard,
                                       lambda: config.where(self.config_table, "dashboard_addr"))
                cleanup.callback(dashboard_sock.close)
            metrics = None
            if parsed.metrics is not None:
                from enigma_gateway_s3.metrics import MetricsServer, new_registry

                registry = new_registry()
                metrics = MetricsServer(registry, *parsed.metrics,
                                        lambda: config.where(self.config_table, "metrics_addr"))
                cleanup.callback(metrics.close)
            store = ObjectStore(repository)  # unlocks the keys: a bad passphrase stops here
            cleanup.callback(store.close)
            app: Any = S3App(store, parsed)
            if metrics is not None:
                from enigma_gateway_s3.metrics import GatewayMetrics, RepositoryCollector

                registry.register(RepositoryCollector(store.manifest, store.manifest.path))
                app = GatewayMetrics(registry, parsed.domains).wrap(app)
            sweeper = Sweeper(store.manifest, parsed.multipart_expiry)
            sweeper.start()
            cleanup.callback(sweeper.stop)
            snapshots = PeriodicSnapshots(repository, parsed.snapshot_interval)
            snapshots.start()
            cleanup.callback(snapshots.stop)  # runs before store.close: LIFO
            cleanup.callback(store.releaser.run_every(TRIM_INTERVAL))
            tls = {"ssl_certfile": parsed.tls_cert or None, "ssl_keyfile": parsed.tls_key or None}
            server = _Server(uvicorn.Config(
                app, lifespan="on", access_log=False, log_config=None,
                timeout_graceful_shutdown=30, server_header=False, date_header=True, **tls))
            servers = [(server, sock)]
            if dashboard_sock is not None:
                from enigma_gateway_s3.dashboard import create_app

                servers.append((_Server(uvicorn.Config(
                    create_app(store, parsed, repository), lifespan="off", access_log=False,
                    log_config=None, timeout_graceful_shutdown=5, server_header=False,
                    date_header=True, **tls), companion=True), dashboard_sock))
            print(f"enigma: S3 gateway listening on {parsed.scheme}://"
                  f"{_url_host(parsed.host)}:{parsed.port} (region {parsed.region})"
                  + (f", metrics on http://{_url_host(parsed.metrics[0])}:"
                     f"{parsed.metrics[1]}/metrics" if parsed.metrics else "")
                  + (f", dashboard on {parsed.scheme}://{_url_host(parsed.dashboard[0])}:"
                     f"{parsed.dashboard[1]}/" if parsed.dashboard else ""),
                  file=sys.stderr, flush=True)
            _run(servers)


class PeriodicSnapshots:
    """Stores an encrypted manifest snapshot in every backend each ``interval`` seconds
    when the manifest changed, and once more at shutdown, so a lost gateway machine is
    recoverable with ``enigma recover``. In a Raft cluster only the leader writes them.

    The first check after start always writes (what changed before this process started
    is unknown); later ones compare a digest of the manifest copy with the last stored.
    """

    def __init__(self, repository: Any, interval: float) -> None:
        self.repository = repository
        self._digest = ""
        self._periodic = Periodic("manifest snapshot", interval, self.snapshot)

    def start(self) -> None:
        self._periodic.start()

    def snapshot(self) -> None:
        """One check: store a snapshot if this node leads and the manifest changed."""
        from enigma.recovery import store_snapshot

        log = logging.getLogger("enigma_gateway_s3")
        try:
            if not self.repository.manifest.is_leader():
                return
            result = store_snapshot(self.repository, previous_digest=self._digest)
        except Exception as exc:  # never let the thread die; try again next time
            log.error("manifest snapshot failed: %s", exc)
            return
        for error in result.failed.values():
            log.warning("manifest snapshot not stored: %s", error)
        if result.stored:  # stored somewhere: the next change writes the next one
            self._digest = result.digest

    def stop(self) -> None:
        """Wait for a snapshot in progress, then take the final one (when enabled)."""
        if self._periodic.stop(timeout=SNAPSHOT_JOIN_SECONDS):
            self.snapshot()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int, where: Callable[[], str]) -> socket.socket:
    """Bind the listening socket ourselves, so a taken port is a one-line ConfigError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"{where()}: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{where()}: cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    return sock


def _server_class() -> Any:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """Stops on SIGINT/SIGTERM after in-flight requests finish, then returns normally
        (uvicorn would re-raise the signal, killing the process before cleanup), and
        stops its companions (the dashboard) with it."""

        companions: tuple[Any, ...] = ()

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            for companion in self.companions:
                companion.should_exit = True
                companion.force_exit = self.force_exit
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    class CompanionServer(uvicorn.Server):
        """A second server in the same event loop: the main server owns the signals."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    return GracefulServer, CompanionServer


def _Server(config: Any, companion: bool = False) -> Any:
    main, second = _server_class()
    return (second if companion else main)(config)


def _run(servers: list[tuple[Any, socket.socket]]) -> None:
    """Serve the first server and its companions in one event loop until a signal stops
    the first (then the others) or the first ends on its own."""
    import asyncio  # here: every command imports this module for its config table

    (main, sock), others = servers[0], servers[1:]
    if not others:
        main.run(sockets=[sock])
        return
    main.companions = tuple(server for server, _sock in others)

    async def everything() -> None:
        tasks = [asyncio.create_task(server.serve(sockets=[s])) for server, s in others]
        try:
            await main.serve(sockets=[sock])
        finally:
            for server in main.companions:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)

    with asyncio.Runner(loop_factory=main.config.get_loop_factory()) as runner:
        runner.run(everything())
