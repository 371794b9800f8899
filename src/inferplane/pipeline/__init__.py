"""The ordered request stages and the context object they share."""
