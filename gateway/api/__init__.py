"""The gateway's own endpoints under the prefix (starlette): the handshake, self-service,
admin and the OpenAPI document."""
