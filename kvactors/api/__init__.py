"""API layer: the wire protocol, transport, RPC, clients and the request handler."""
