"""Model kinds: one module per kind (pure numpy)."""
