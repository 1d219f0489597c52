"""pagestore services: thin gRPC adapters around the pagestore library."""
