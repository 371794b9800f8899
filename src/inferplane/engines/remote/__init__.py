"""Remote deployments: the HTTP upstream client and one adapter per API
(OpenAI-compatible servers, Anthropic)."""
