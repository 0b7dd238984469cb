"""Tests of the configuration package: section validators, registries, JSON Schemas."""
