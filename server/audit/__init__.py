"""Audit devices (Vault's ``sys/audit``): ``broker`` (the device table, salts, fail-closed
writes), ``devices`` (file and socket sinks), ``entry`` (Vault's JSON entries and hashing)."""

from server.audit.broker import AUDIT_KEY, AuditBroker, AuditDevice, AuditUnavailable
from server.audit.entry import Record

__all__ = ["AUDIT_KEY", "AuditBroker", "AuditDevice", "AuditUnavailable", "Record"]
