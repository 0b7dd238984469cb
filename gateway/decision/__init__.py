"""Deciding a request: canonical paths, policies, identity, tokens and their uses."""
