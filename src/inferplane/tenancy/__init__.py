"""Keys and principals."""
