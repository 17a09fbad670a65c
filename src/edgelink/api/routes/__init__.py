"""The admin API's routes, one module per area; `edgelink.api.app.create_app` assembles them.

Each module has ``router(gateway)`` returning a FastAPI router whose handlers
read and act only through the gateway's public methods.
"""
