"""One validator per section of the configuration file, each collecting every error it
finds and adding what it read to the settings, in the manner of Authelia's
internal/configuration/validator."""

from gateway.config.sections import auth, decisions, server, state
from gateway.config.sections.base import Loading, Section

# Sections run in this order because some read what an earlier one produced: identity's
# realm defaults to `realm`, notify names a channel under `factors`, and the rules may
# require only configured factors and match case as `paths` says, so policies come last.
SECTIONS: tuple[Section, ...] = (
    *server.SECTIONS, *state.SECTIONS, *auth.SECTIONS, *decisions.SECTIONS,
)

__all__ = ["SECTIONS", "Loading", "Section"]
