"""Per-example objectives of the attacks (written for one image; vmap at the call site)."""
