"""The data space's browse tree: segments and MQTT topic levels are both tree levels."""

from __future__ import annotations

from edgelink.router.engine import Router


def test_topic_levels_are_tree_levels() -> None:
    """Test that ``broker.a/b/c`` is browsed as broker -> a -> b -> c, beside dotted tags."""
    router = Router()
    router.route_data("broker", "nodered/flows/temp", 21.5)
    router.route_data("broker", "nodered/flows/hum", 40)
    router.route_data("broker", "nodered/status", "online")
    router.route_data("plc", "MAIN.temp", 1)
    space = router.data
    assert space.children() == ["broker", "plc"]
    assert space.children("broker") == ["broker.nodered"]
    assert space.children("broker.nodered") == ["broker.nodered/flows", "broker.nodered/status"]
    assert space.children("broker.nodered/flows") == [
        "broker.nodered/flows/hum",
        "broker.nodered/flows/temp",
    ]
    assert space.children("broker.nodered/") == space.children("broker.nodered")
    assert space.children("plc.") == ["plc.MAIN"]
    assert space.has_children("broker.nodered/flows")
    assert not space.has_children("broker.nodered/flows/hum")
    assert space.child_count("broker.nodered/flows") == 2
    assert space.children("broker.nodered/flows", limit=1) == ["broker.nodered/flows/hum"]
    assert space.children("broker.nodered/flows/temp") == []


def test_an_address_that_is_also_a_branch_and_empty_levels() -> None:
    """Test a topic with children of its own, and topics with empty levels (``/x``, ``a//b``)."""
    router = Router()
    router.route_data("mq", "a", 1)
    router.route_data("mq", "a/b", 2)
    router.route_data("mq", "/x", 3)
    router.route_data("mq", "c//d", 4)
    space = router.data
    assert space.children("mq") == ["mq.", "mq.a", "mq.c"]
    assert space.children("mq.a") == ["mq.a/b"] and space.get("mq.a") is not None
    assert space.children("mq.") == ["mq./x"]
    assert space.children("mq.c") == ["mq.c/"]
    assert space.children("mq.c/") == ["mq.c//d"]


def test_eviction_and_removal_prune_topic_branches() -> None:
    """Test that a forgotten topic takes its now empty levels with it, and the version grows."""
    router = Router(max_addresses=2)
    router.route_data("mq", "plant/line1/power", 1)
    router.route_data("mq", "plant/line2/power", 2)
    space = router.data
    version = space.tree_version
    router.route_data("dev", "x", 3)  # evicts mq.plant/line1/power
    assert space.tree_version > version
    assert space.children("mq.plant") == ["mq.plant/line2"]
    assert not space.has_children("mq.plant/line1")
    router.route_data("dev", "y", 4)  # evicts the last mq address: the branch goes
    assert space.children() == ["dev"]
    assert space.child_count("mq") == 0
    router.route_data("mq", "a/b", 5)
    assert space.remove("mq") == 1
    assert space.children() == ["dev"]
