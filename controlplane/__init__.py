"""A Raft-replicated control plane: ports, membership and a model registry behind gRPC."""

__version__ = "0.1.0"
