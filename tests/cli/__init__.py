"""Tests of the stepgate command, one module per command group."""
