"""Webhook targets: POST each routed datapoint as JSON (httpx), with retries.

Declared in ``edgelink.json`` and addressed in ``routing.json`` as
``webhook.<name>``::

    {"webhooks": {"alert_service": {"url": "https://alerts.example/hook",
                                    "headers": {"X-Source": "edgelink"},
                                    "api_key": "...", "timeout": 5, "retries": 3}}}

The router delivers to each target from a task of its own, so a slow or
failing webhook delays only itself, never the router or other targets.
A request that fails (transport error, timeout, HTTP 5xx or 429) is retried
with exponential backoff and jitter; 4xx other than 429 is not retried. A
delivery that fails for good is counted (`failed`), reported through
``on_failure`` (the service emits a ``webhook_failed`` event) and raised,
so the route counts an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from edgelink.backoff import Backoff
from edgelink.router.datapoint import DataPoint
from edgelink.router.targets import Target

__all__ = ["WebhookTarget"]

logger = logging.getLogger(__name__)

FailureHook = Callable[[str, str, DataPoint], None]


class WebhookTarget(Target):
    """POSTs ``{"tag", "address", "value", "ts", "quality", "source", "path"}`` to a URL.

    Args:
        name: The webhook's name (``alert_service`` for ``webhook.alert_service``).
        url: Where to POST.
        headers: Extra headers.
        api_key: Sent as ``Authorization: Bearer <api_key>``; never logged.
        timeout: Per request, s.
        retries: Retries after the first attempt.
        backoff: The delay policy between attempts.
        on_failure: Called ``(name, error, dp)`` when a delivery failed for good.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: Backoff | None = None,
        on_failure: FailureHook | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the extras installed
            raise RuntimeError("webhooks need httpx: pip install 'edgelink[service]'") from exc
        self.name = name
        self.url = url
        self.retries = retries
        self.backoff = backoff or Backoff(initial=0.5, multiplier=2.0, max=10.0, max_attempts=None)
        self._on_failure = on_failure
        all_headers = dict(headers or {})
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(timeout=timeout, headers=all_headers)
        self._httpx = httpx
        self.sent = 0
        self.failed = 0
        self.retried = 0

    async def send(self, tag: str, dp: DataPoint) -> None:
        """POST one datapoint, retrying transient failures.

        Raises:
            RuntimeError: when the delivery failed for good (after the retries,
                or at once for a 4xx answer other than 429).
        """
        body: dict[str, Any] = {"tag": tag, **dp.as_dict()}
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(self.backoff.delay(attempt))
            try:
                response = await self._client.post(self.url, json=body)
            except self._httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 300:
                self.sent += 1
                return
            error = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break
        self.failed += 1
        logger.warning("webhook %s: delivery of %s failed: %s", self.name, dp.address, error)
        if self._on_failure is not None:
            self._on_failure(self.name, error, dp)
        raise RuntimeError(f"webhook {self.name}: {error}")

    def stats(self) -> dict[str, int]:
        """Deliveries sent, failed for good, and retries made."""
        return {"sent": self.sent, "failed": self.failed, "retried": self.retried}

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"<WebhookTarget {self.name} sent={self.sent} failed={self.failed}>"
