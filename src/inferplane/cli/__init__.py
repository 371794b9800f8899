"""`inferplane ...` commands."""
