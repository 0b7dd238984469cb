"""JSON Schemas (draft 2020-12) of the configuration file and of a policy file, for
``stepgate schema`` and the YAML language servers of editors (docs/configuration.md,
Editor support). Both are built from the declarations the validators read; what a schema
cannot say (a notify channel must be configured, a factor must be enabled) only the loader
checks."""

from __future__ import annotations

from gateway.config.fields import Schema, obj
from gateway.config.rules import policy_file_schema
from gateway.config.sections import SECTIONS

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_schema() -> Schema:
    properties: dict[str, Schema] = {}
    required: list[str] = []
    for section in SECTIONS:
        properties.update(section.schema())
        required.extend(section.required)
    return {"$schema": DIALECT, "$id": "urn:stepgate:schema:config",
            "title": "Stepgate configuration",
            "description": "stepgate run --config FILE; every key: docs/configuration.md",
            **obj(properties, required)}


def policies_schema() -> Schema:
    return {"$schema": DIALECT, "$id": "urn:stepgate:schema:policies",
            "title": "Stepgate policy file",
            "description": "rules: the first that matches decides (docs/configuration.md, "
                           "Policies)",
            **policy_file_schema()}


SCHEMAS = {"config": config_schema, "policies": policies_schema}
