"""The redo service (see ARCHITECTURE.md)."""
