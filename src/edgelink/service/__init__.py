"""The gateway service (``edgelink run``): a config folder assembled into a running gateway."""
