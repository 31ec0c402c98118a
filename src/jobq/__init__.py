"""jobq: a PostgreSQL-native async job queue. The rules live in SQL."""

__version__ = "0.1.0.dev0"
