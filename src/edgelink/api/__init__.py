"""The admin API of the service (FastAPI): connections, admin actions, events, metrics, stream."""
