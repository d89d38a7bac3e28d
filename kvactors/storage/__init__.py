"""Storage layer: per-partition StoreServers, their supervisor and the backends."""
