"""Enigma storage plugin (see README.md)."""
