"""SQL migrations of the PostgreSQL store, applied in order by ``keybrake migrate``."""
