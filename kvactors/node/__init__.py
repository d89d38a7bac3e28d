"""The node's request path: the RequestHandler actor and the collaborators of its loop."""
