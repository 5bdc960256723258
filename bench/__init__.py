"""`make bench`: our 3-server cluster against a 3-member etcd 3.4, driven by one grpc.aio load generator."""
