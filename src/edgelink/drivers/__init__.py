"""Protocol drivers, one module per protocol.

Each is found by type name through `edgelink.registry.DriverRegistry`; a
driver's third-party library is an extra.
"""
