"""Multi-process cluster tests: real ``python -m controlplane serve`` processes on loopback.

Every scenario ends in invariant checks (hashicorp/raft ``fuzzy`` VerifyLog/VerifyFSM style):
acknowledged writes are present with their values on every server, servers agree on their log
position and on their whole key space, and revisions are never reused.
"""
