"""The pageread service (see ARCHITECTURE.md)."""
