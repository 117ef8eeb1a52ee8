"""Enigma key providers that keep the key material in a cloud vault instead of a keyfile.

``azure-keyvault``, ``gcp-secretmanager`` and ``aws-secretsmanager``; each cloud's SDK is
an extra (``pip install 'enigma-keys-vault[aws]'``) and is imported only when used.
"""

__version__ = "0.1.0"
