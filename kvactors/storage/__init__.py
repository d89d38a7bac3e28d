"""Tables (memory, lmdb), records, the replica logic over a table and the
StoreServer actors that serve it.
"""
