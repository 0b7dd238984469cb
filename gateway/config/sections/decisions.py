"""Sections about deciding and challenging: ``policies`` and ``default_action`` (the rules
themselves are validated by config.rules against the factors the earlier sections enabled),
``manage`` (the built-in ``stepgate:manage`` rule), the lifetimes ``challenge_ttl`` and
``ticket_ttl``, and ``throttle`` (docs/configuration.md)."""

from __future__ import annotations

from gateway.config.fields import Choice, Duration, Group, Integer, Text, literal
from gateway.config.registry import IDENTITY_SOURCES
from gateway.config.rules import MAX_TTL, RuleSet, load_rules
from gateway.config.sections.base import Loading, Section, properties_of, read_group
from gateway.config.settings import ManageSettings, Settings, ThrottleSettings
from gateway.config.validate import Reader, listing

DEFAULT_POLICIES = "policies/"

POLICIES = Group(Settings, (
    Text("policies", derive=lambda _: DEFAULT_POLICIES,
         doc="a YAML file, or a folder whose *.yaml are read in name order"),
    Choice("default_action", literal(Settings, "default_action"),
           doc="for requests no rule matches"),
))


def _policies(r: Reader, ctx: Loading) -> None:
    values = POLICIES.read(r)
    ctx.values["default_action"] = values["default_action"]
    ctx.policies = ctx.resolve(values["policies"] or DEFAULT_POLICIES)
    ctx.values["policies_path"] = ctx.policies
    ctx.values["rules"] = load_rules(
        ctx.policies, known_factors=ctx.known_factors, base=ctx.base, errors=ctx.errors,
        case_insensitive=bool(ctx.values.get("case_insensitive", False)))


def identity_problem(ctx: Loading, rules: RuleSet) -> str | None:
    """Rules that require a second factor need to know who the user is (docs/configuration.md)."""
    if not any(rule.require for rule in rules.rules):
        return None
    if ctx.values.get("basic") or ctx.values.get("header_identity"):
        return None
    return (f"{ctx.where}: identity: expected {listing(IDENTITY_SOURCES)} because rules "
            "require a second factor, found no identity source")


THROTTLE = Group(ThrottleSettings, (
    Integer("challenge_attempts", minimum=1, maximum=100,
            doc="wrong codes that kill a challenge (410)"),
    Integer("lock_after", minimum=1, maximum=1000,
            doc="consecutive failures that lock the user"),
    Duration("lock_base", doc="first lock; doubles with every further lock"),
    Duration("lock_max", doc="longest lock"),
    Integer("hard_lock_after", minimum=1, maximum=100000,
            doc="consecutive failures that lock until an administrator unlocks"),
    Integer("challenges_per_window", minimum=1, doc="challenges per user per challenge_window"),
    Duration("challenge_window"),
    Integer("sends_per_window", minimum=1, doc="codes sent per user per send_window"),
    Duration("send_window"),
    Integer("enrolment_sends_per_window", minimum=1,
            doc="codes sent per user per send_window to addresses being enrolled, counted "
            "apart from sends_per_window"),
    Duration("resend_after", doc="between sends for the same ticket and factor"),
))

MANAGE = Group(ManageSettings, (
    Choice("binding", literal(ManageSettings, "binding"),
           doc="binding of the built-in stepgate:manage rule (factor changes)"),
    # A token is never valid for longer than a rule's may be (docs/protocol.md).
    Duration("ttl", maximum=MAX_TTL),
))

# Bounded so that a typo ('10h') cannot keep a challenge open, or a ticket usable, long
# enough to outlast the factor it asks for (docs/configuration.md: at most 10 minutes).
TTLS = Group(Settings, (
    Duration("challenge_ttl", maximum=600, doc="lifetime of a challenge"),
    Duration("ticket_ttl", maximum=3600, doc="lifetime of the ticket in a 401"),
))


def _throttle(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "throttle", THROTTLE)
    if values is not None:
        ctx.values["throttle"] = ThrottleSettings(**values)


def _manage(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "manage", MANAGE)
    if values is not None:
        ctx.values["manage"] = ManageSettings(**values)


def _ttls(r: Reader, ctx: Loading) -> None:
    ctx.values.update(TTLS.read(r))


SECTIONS = (
    Section("throttle", _throttle, lambda: {"throttle": THROTTLE.schema()}),
    Section("manage", _manage, lambda: {"manage": MANAGE.schema()}),
    Section("ttls", _ttls, lambda: properties_of(TTLS)),
    Section("policies", _policies, lambda: properties_of(POLICIES)),
)
