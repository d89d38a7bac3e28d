"""What keeps a key's N replicas in step: the coordinator, hints, anti-entropy,
join and leave handoff, stale copies.
"""
