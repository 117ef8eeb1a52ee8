"""The exception tree every layer raises, so the CLI can turn any of them into one clean line."""

from __future__ import annotations


class EnigmaError(Exception):
    """Base of every error Enigma reports to a user; ``str()`` is the one-line message."""

    exit_code = 1


class ConfigError(EnigmaError):
    """A config file, table or key is missing, malformed or refers to something unknown."""


class PluginError(EnigmaError):
    """A plugin is missing, broken, or two plugins claim the same name."""


class StorageError(EnigmaError):
    """A storage provider failed permanently (bad credentials, missing bucket, I/O error)."""


class ObjectNotFound(StorageError):
    """The requested object does not exist in the provider."""


class TransientStorageError(StorageError):
    """A failure worth retrying (timeouts, throttling, 5xx, connection resets)."""


class IntegrityError(EnigmaError):
    """Data failed authentication or a hash check: tampered, truncated or corrupted."""


class AuthError(EnigmaError):
    """Wrong passphrase or credentials, or key material that cannot be unlocked."""


class NotFoundError(EnigmaError):
    """A backup, path or other named thing the user asked for does not exist."""


class UnavailableError(EnigmaError):
    """The manifest cannot commit or answer consistently right now (a replicated manifest
    without a quorum): nothing was changed, retrying later is safe."""
