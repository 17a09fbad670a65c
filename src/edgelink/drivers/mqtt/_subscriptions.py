"""The mqtt driver's subscriptions: kept in a ledger, subscribed on every link, confirmed.

Configured and run-time subscriptions live in a `SubscriptionLedger`; every
new link subscribes them again (`SUBSCRIBE_BATCH` filters per packet), and
each must be confirmed within ``subscribe_timeout`` — by its SUBACK, or by
its first message for ``expect_data`` subscriptions — or the health turns
``degraded`` and the unconfirmed ones are replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from edgelink.drivers._subscriptions import Subscription, SubscriptionLedger
from edgelink.drivers.configs import MqttConfig
from edgelink.drivers.mqtt._codec import filter_error, match_filter
from edgelink.drivers.mqtt._io import SUCCESS, PahoLink
from edgelink.errors import ConfigError, DeviceError

__all__ = ["SUBSCRIBE_BATCH", "MqttSubscriptions"]

logger = logging.getLogger(__name__)

#: Topic filters per SUBSCRIBE packet when the ledger replays many.
SUBSCRIBE_BATCH: Final = 100


class MqttSubscriptions(PahoLink):
    """A paho link whose subscriptions survive reconnects: the ledger and its SUBACKs.

    The SUBSCRIBE of the health topic (``echo`` health checks) is answered
    here too; its refusal is logged, not held against the ledger.
    """

    qos: int
    health_topic: str

    def _setup_subscriptions(self, cfg: MqttConfig) -> None:
        """Create the ledger and record the configured subscriptions.

        Raises:
            ConfigError: for an invalid topic filter, naming its place in the config.
        """
        cid = self.connection_id
        self._ledger = SubscriptionLedger(
            self._replay,
            confirm_within=cfg.subscribe_timeout,
            clock=lambda: self.clock,
            on_degraded=self.report_degraded,
            name=cid,
        )
        for i, item in enumerate(cfg.subscribe):
            path = f"config.subscribe[{i}]"
            error = filter_error(item.topic)
            if error is not None:
                # A plain string is the subscription: the path names it, not its topic.
                raw = self.config["subscribe"][i]
                where = path if isinstance(raw, str) else f"{path}.topic"
                raise ConfigError(
                    f"topic filter {item.topic!r} {error}", path=where, connection_id=cid
                )
            qos = self.qos if item.qos is None else item.qos
            self._ledger.add(item.topic, qos=qos, expect_data=item.expect_data)
        #: SUBSCRIBE packets waiting for their SUBACK, by packet id: the filters they carry.
        self._sub_mids: dict[int, list[str]] = {}
        self._health_sub_mid: int | None = None

    @property
    def subscriptions(self) -> SubscriptionLedger:
        """The subscription ledger: what is subscribed and whether the broker confirmed it."""
        return self._ledger

    def subscribe(self, topic: str, qos: int | None = None, *, expect_data: bool = False) -> None:
        """Subscribe to a topic filter now (if connected) and after every reconnect.

        Raises:
            DeviceError: for an invalid filter or QoS.
        """
        error = filter_error(topic)
        if error is not None:
            raise DeviceError(f"topic filter {topic!r} {error}", connection_id=self.connection_id)
        q = self.qos if qos is None else qos
        if q not in (0, 1, 2):
            raise DeviceError(f"qos must be 0, 1 or 2, got {q!r}", connection_id=self.connection_id)
        self._ledger.add(topic, qos=q, expect_data=expect_data)

    def unsubscribe(self, topic: str) -> None:
        """Forget a subscription: unsubscribed now (if connected) and not replayed again."""
        if self._ledger.remove(topic) is not None and self.is_connected():
            assert self._client is not None
            self._client.unsubscribe(topic)

    def _is_subscribed(self, topic: str) -> bool:
        """Whether a filter of the ledger matches ``topic``."""
        return any(paho.topic_matches_sub(match_filter(e.key), topic) for e in self._ledger)

    def _data_arrived(self, topic: str) -> None:
        """Confirm the ``expect_data`` subscriptions that a message on ``topic`` matches."""
        for key in list(self._ledger.awaiting_data):
            if paho.topic_matches_sub(match_filter(key), topic):
                self._ledger.data_received(key)

    def _replay(self, entries: Sequence[Subscription]) -> None:
        """Subscribe ledger entries on the current link (the answers come as SUBACKs)."""
        client = self._client
        if client is None or not self._connected:
            return  # the next link replays them
        for start in range(0, len(entries), SUBSCRIBE_BATCH):
            chunk = entries[start : start + SUBSCRIBE_BATCH]
            rc, mid = client.subscribe(
                [(e.key, int(e.options.get("qos", self.qos))) for e in chunk]
            )
            if rc != SUCCESS or mid is None:
                logger.debug("%s: SUBSCRIBE not sent: %s", self.connection_id, rc)
                return
            self._sub_mids[mid] = [e.key for e in chunk]

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Any,
    ) -> None:
        if mid == self._health_sub_mid:
            self._health_sub_mid = None
            if reasons and reasons[0].is_failure:
                logger.warning(
                    "%s: the broker refused the health topic %r (%s): use health_check 'ping'",
                    self.connection_id,
                    self.health_topic,
                    reasons[0].getName(),
                )
            return
        keys = self._sub_mids.pop(mid, None)
        if keys is None:
            return
        for key, reason in zip(keys, reasons, strict=False):
            self._ledger.acknowledged(key, ok=not reason.is_failure, error=reason.getName())

    def _teardown(self) -> None:
        super()._teardown()
        # The packets in flight died with the link: their answers never come.
        self._sub_mids.clear()
        self._health_sub_mid = None
