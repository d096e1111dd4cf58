"""Domain knowledge: per-op backward adapters, rules and the method registry."""
