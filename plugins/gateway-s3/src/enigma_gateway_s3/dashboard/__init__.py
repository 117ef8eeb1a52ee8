"""The read-only web dashboard of ``enigma serve`` (``[s3_proxy] dashboard_addr``).

Server-rendered pages on their own port, behind the gateway's key pairs: backups and their
stats, a snapshot browser with single-file download, provider health and usage, live
progress of running backups and the Raft state. Nothing here writes to the repository.
"""

from enigma_gateway_s3.dashboard.app import create_app

__all__ = ["create_app"]
