"""Errors of the worker control plane."""

from __future__ import annotations


class ProbeError(Exception):
    """The worker did not answer as an inference engine should."""
