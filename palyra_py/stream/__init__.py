"""Live streams: journal events fanned out to SSE clients and `system events tail -f`."""
