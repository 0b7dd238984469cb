"""Second factors behind one interface."""

from .base import Factor, Verification
from .recovery import RecoveryFactor, format_code, new_codes
from .totp import TotpFactor

__all__ = ["Factor", "Verification", "RecoveryFactor", "TotpFactor", "format_code", "new_codes"]
