"""Cluster: the member table, gossip and failure detection, and the actors that run them."""
