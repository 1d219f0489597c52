"""The housekeeping service (see ARCHITECTURE.md)."""
