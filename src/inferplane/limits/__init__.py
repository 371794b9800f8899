"""Rate limits (requests/tokens per minute, concurrency, max tokens) and, later, budgets."""
