"""Raft replication of Enigma's manifest (``enigma-raft``), on pysyncobj."""
