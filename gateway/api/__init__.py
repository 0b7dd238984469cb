"""The gateway's own endpoints under the prefix: handshake, self-service and admin."""
