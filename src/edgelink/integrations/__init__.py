"""Glue between edgelink and the frameworks user apps are written in.

- `edgelink.integrations.fastapi`: a lifespan that runs a `DeviceRegistry`
  (and so the device connections) with the app, and ``Depends``-able
  providers of the database session and the `DeviceConnectionService`.
"""
