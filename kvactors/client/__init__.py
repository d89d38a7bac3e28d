"""Clients: the network Client, the embedded LocalClient, versioned writes."""
