"""The subscription ledger's public name: `SubscriptionLedger` and its entries.

A driver's ``subscriptions`` view (MQTT topic filters, ADS notifications) is
a `SubscriptionLedger`; the code lives with its users in
`edgelink.drivers._subscriptions`, and this module keeps the documented
import path for them and for third-party drivers.
"""

from __future__ import annotations

from edgelink.drivers._subscriptions import (
    Replay,
    Subscription,
    SubscriptionLedger,
    SubscriptionState,
)

__all__ = ["Replay", "Subscription", "SubscriptionLedger", "SubscriptionState"]
