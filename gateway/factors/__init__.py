"""Second factors behind one interface."""

from .base import Answer, Enrolment, Factor, Started, Verification
from .recovery import RecoveryFactor, format_code, new_codes
from .totp import TotpFactor

__all__ = ["Answer", "Enrolment", "Factor", "RecoveryFactor", "Started", "TotpFactor",
           "Verification", "format_code", "new_codes"]
