"""Pure logic, no I/O: hashing, ring, placement, handoff plans, versions, quorum,
hash trees, membership, gossip and the replica-operation vocabulary.

Imports only `kvactors.core` and the ground floor (errors, config, codec).
"""
