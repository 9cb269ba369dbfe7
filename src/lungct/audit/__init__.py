"""Data audit: duplicates, look-alike groups, split leakage, label shortcuts and class balance."""

from lungct.audit.core import run_audit

__all__ = ["run_audit"]
