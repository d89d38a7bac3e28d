"""ZeroMQ and the wire: the transport thread, node-to-node RPC, the client protocol."""
