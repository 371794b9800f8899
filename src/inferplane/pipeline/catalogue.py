"""The model catalogue: which model ids a caller may see and use, and what each is."""

from __future__ import annotations

from inferplane.engines.interface import unsupported
from inferplane.engines.local.model import LocalEmbedder, LocalModel, as_embedder
from inferplane.errors import ModelNotAllowed, ModelNotFound
from inferplane.routing.deployments import Alias
from inferplane.routing.router import Router
from inferplane.tenancy.records import Principal


class Catalogue:
    def __init__(self, models: dict[str, LocalModel], router: Router):
        self.models = models
        self.router = router

    def visible(self, principal: Principal) -> list[LocalModel | Alias]:
        listed: list[LocalModel | Alias] = [m for m in self.models.values() if m.spec.listed]
        listed += [a for a in self.router.aliases.values() if a.id not in self.models]
        return [m for m in listed if principal.may_use(m.id)]

    def known(self, model: str) -> bool:
        return model in self.models or self.router.get(model) is not None

    def embedder(self, principal: Principal, model: str) -> LocalEmbedder:
        """The embedding model a request names."""
        local = self.models.get(model)
        if local is None or not local.spec.listed:
            raise ModelNotFound(model)
        if not principal.may_use(model):
            raise ModelNotAllowed(model)
        if local.is_llm:
            raise unsupported(model, "embedding")
        return as_embedder(local)

    def alias(self, principal: Principal, model: str) -> Alias:
        """The alias a generation request names (a local LLM is a one-deployment alias)."""
        alias = self.router.get(model)
        if alias is None:
            local = self.models.get(model)
            if local is not None and local.spec.listed:
                raise unsupported(model, "llm")
            raise ModelNotFound(model)
        if not principal.may_use(model):
            raise ModelNotAllowed(model)
        return alias
