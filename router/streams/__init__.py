"""Streams on their way to the client: the SSE splitter, response transforms, the relay."""
