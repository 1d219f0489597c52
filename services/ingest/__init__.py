"""The ingest service (see ARCHITECTURE.md)."""
