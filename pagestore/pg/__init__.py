"""PostgreSQL's formats and processes: WAL pages and records, pg_control, tar, the wire
protocol, and PgCluster (a real server in a directory of ours)."""
