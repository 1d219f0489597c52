"""The libpq gateway: Neon page service protocol -> gRPC pageread."""
