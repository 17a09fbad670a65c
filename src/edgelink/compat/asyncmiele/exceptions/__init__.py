"""The asyncmiele guide's exceptions package: its names are in `.connection`."""
