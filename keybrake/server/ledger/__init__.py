"""Reservations and settlements, the audit log, metrics and retention."""
