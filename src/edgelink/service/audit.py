"""`Auditor`: one audit record per admin action, whoever asks (API today, web UI later).

The gateway's admin methods (`Gateway.instance_action`, `Gateway.replace_routes`,
`Gateway.panic`, `Gateway.recover`, `Gateway.reload`) run their work inside
`Auditor.action`, which writes one record with who, what, when and the
result, also when the action fails or is refused. Callers pass only who they
are: `token_identity` for a bearer token (a stable fingerprint, never the
token), `user_identity` for a signed-in user of the UI.

Widget changes will be audited the same way once widgets exist: their
service functions call `Auditor.action` with ``action="widget_<verb>"``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from edgelink.store.audit import AuditLog

__all__ = ["SYSTEM", "Auditor", "token_identity", "user_identity"]

logger = logging.getLogger(__name__)

#: Who the gateway itself is (folder watch, SIGHUP, start-up): not audited.
SYSTEM = "system"


def token_identity(token: str) -> str:
    """Return a stable short fingerprint of a bearer token, e.g. ``token:ab12cd34``."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def user_identity(name: str) -> str:
    """Return the audit identity of a signed-in user, e.g. ``user:alice``."""
    return "user:" + name


class Auditor:
    """Writes the audit records of admin actions (a no-op without a log).

    Args:
        log: Where records go; None (no storage yet) audits nothing.
    """

    def __init__(self, log: AuditLog | None = None) -> None:
        self.log = log

    @asynccontextmanager
    async def action(
        self,
        who: str,
        action: str,
        target: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Audit the block: one record, ``ok`` or ``error`` with the reason.

        The block may add details of the outcome to the yielded dict (they are
        stored with the parameters). Actions by `SYSTEM` are not recorded.

        Example:
            async with auditor.action(who, "stop", "plc_1") as outcome:
                outcome["status"] = await do_it()
        """
        outcome: dict[str, Any] = {}
        try:
            yield outcome
        except Exception as exc:
            await self._write(who, action, target, params, outcome, "error", str(exc) or repr(exc))
            raise
        await self._write(who, action, target, params, outcome, "ok", None)

    async def _write(
        self,
        who: str,
        action: str,
        target: str | None,
        params: dict[str, Any] | None,
        outcome: dict[str, Any],
        result: str,
        error: str | None,
    ) -> None:
        if self.log is None or who == SYSTEM:
            return
        written = await self.log.record(
            who, action, target, {**(params or {}), **outcome}, result, error
        )
        if written is None:
            logger.error("audit record of %s %s by %s not written", action, target or "", who)
