"""HTTP surface only: routes, request/response schemas, error mapping."""
