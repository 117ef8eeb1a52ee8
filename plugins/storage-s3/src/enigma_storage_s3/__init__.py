"""Enigma storage plugin for Amazon S3 and S3-compatible servers (boto3)."""
