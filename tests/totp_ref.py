"""An RFC 6238 reference written from the RFC, independent of pyotp, for cross-checking."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time


def hotp(secret_b32: str, counter: int, digits: int = 6) -> str:
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


class Device:
    """An authenticator app: hands out codes for successive unused time steps."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.last = -1
        self.issued: list[str] = []

    def code(self) -> str:
        while True:
            now = int(time.time() // 30)
            step = max(now, self.last + 1)
            if step <= now + 1:  # the gateway accepts one step of drift ahead
                self.last = step
                self.issued.append(hotp(self.secret, step))
                return self.issued[-1]
            time.sleep(0.5)
