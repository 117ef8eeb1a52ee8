"""``S3Gateway``: the ``Server`` that ``enigma serve`` starts when ``[s3_proxy]`` exists."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from enigma.errors import ConfigError
from enigma.interfaces import Server
from enigma_gateway_s3.config import parse_options


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
                               repository._reveal, config.resolve)
        sock = _bind(parsed.host, parsed.port,
                     lambda: config.where(self.config_table, "listen_addr"))
        try:
            store = ObjectStore(repository)  # unlocks the keys: a bad passphrase stops here
        except BaseException:
            sock.close()
            raise
        sweeper = None
        try:
            app = S3App(store, parsed)
            sweeper = Sweeper(store.manifest, parsed.multipart_expiry)
            sweeper.start()
            server = _Server(uvicorn.Config(
                app, lifespan="on", access_log=False, log_level="warning",
                timeout_graceful_shutdown=30, server_header=False, date_header=True,
                ssl_certfile=parsed.tls_cert or None, ssl_keyfile=parsed.tls_key or None))
            host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
            print(f"enigma: S3 gateway listening on {parsed.scheme}://{host}:{parsed.port} "
                  f"(region {parsed.region})", file=sys.stderr, flush=True)
            server.run(sockets=[sock])
        finally:
            if sweeper is not None:
                sweeper.stop()
            sock.close()
            store.close()


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
        (uvicorn would re-raise the signal, killing the process before cleanup)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return GracefulServer


def _Server(config: Any) -> Any:
    return _server_class()(config)
