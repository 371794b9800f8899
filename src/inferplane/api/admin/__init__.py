"""/admin/v1: the control plane's HTTP surface (admin-scoped keys only)."""
