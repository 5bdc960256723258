"""Runnable examples of the gossip layer.

- ``gossip.examples.digits``: decentralized training of a softmax regression on scikit-learn's
  digits across 8 workers with non-IID shards, next to the same model trained centrally
  (``python -m gossip.examples.digits``; see README.md here).

The examples need the ``examples`` extra (scikit-learn, for its bundled datasets).
"""
