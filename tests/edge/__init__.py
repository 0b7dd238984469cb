"""Tests of gateway/http (the edge): the ASGI application in-process. Named so that the
tests folder, which holds helper scripts run as programs, never shadows the standard
library's http package."""
