"""Enigma storage plugin ``Faulty``: a local directory that fails on purpose, for tests."""
