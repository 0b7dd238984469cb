"""The data path to the upstream: header hygiene and the Forwarder seam with its clients."""

from gateway.proxy.forwarder import (
    AiohttpForwarder,
    Forwarder,
    HttpxForwarder,
    UpstreamError,
    UpstreamResponse,
)
from gateway.proxy.headers import HeaderPolicy, StrHeaders

__all__ = ["AiohttpForwarder", "Forwarder", "HeaderPolicy", "HttpxForwarder", "StrHeaders",
           "UpstreamError", "UpstreamResponse"]
