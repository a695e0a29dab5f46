"""Cloud service: merges fog aggregates per module, versions global modules, evaluates, keeps metrics (SQLite)."""
