"""Enigma's S3-compatible gateway: ``enigma serve`` with an ``[s3_proxy]`` table."""
