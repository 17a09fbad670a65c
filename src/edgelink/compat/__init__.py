"""Compatibility layers for code written against the seed documents.

Each module here gives one document's public names on top of edgelink's one
engine: ``asyncmiele`` (the asyncmiele connection guide), ``enhanced`` (the
enhanced, thread-based connection manager) and ``edgeos`` (the Edge OS data
gateway). They are thin: every call delegates to the supervisor, the router
or the service; none has a state machine or a retry loop of its own. See
``docs/seeds.md`` for the map of names.
"""
