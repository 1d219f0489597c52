"""pagestore: a page server for PostgreSQL 15.

The domain library every service uses: LSNs and ids, the key space, PostgreSQL formats
(pg/), layer files (layers/), the catalog (catalog/), remote storage (remote/), the one
config model and the CLI.  Services under services/ and gateway/ are thin adapters
around it.
"""

__version__ = "0.1.0"
