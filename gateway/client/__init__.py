"""The Python client helper: an httpx.Auth that follows Stepgate's 401 handshake.

    from gateway.client import StepgateAuth

    auth = StepgateAuth(lambda factor, info: input(f"{factor} code: "), basic=("alice", "pw"))
    httpx.post("http://gw/accounts/1/transactions", json={...}, auth=auth)

Works with ``httpx.Client`` and ``httpx.AsyncClient`` (where the code callback may be
async). See docs/client.md.
"""

from gateway.client._auth import CodeCallback, StepgateAuth, WaitCallback
from gateway.client._cache import CachedToken, MemoryTokenCache, TokenCache, TokenKey
from gateway.client._errors import BodyNotReplayable, SecondFactorError
from gateway.client._prompt import RESEND, CodePrompt, Pause

__all__ = ["RESEND", "BodyNotReplayable", "CachedToken", "CodeCallback", "CodePrompt",
           "MemoryTokenCache", "Pause", "SecondFactorError", "StepgateAuth", "TokenCache",
           "TokenKey", "WaitCallback"]
