"""Distribution: the ring, versions, quorums, and the actors that place and replicate keys."""
