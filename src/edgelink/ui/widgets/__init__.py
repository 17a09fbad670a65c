"""Reusable pieces of the web UI's pages (`bms`: the battery card)."""
