"""The served models: the base, every adapter in the registry, and every alias; for a
project's key only its own and shared adapters (``scope``; None: all)."""

from __future__ import annotations

from typing import Any

from service.errors import ModelNotFound
from service.models.protocol import ModelCard, ModelList
from service.tenancy import resolve_visible


class ModelsServing:
    def __init__(self, base_id: str, base_path: str, max_model_len: int, registry: Any,
                 started: int) -> None:
        self.base_id = base_id
        self.base_path = base_path
        self.max_model_len = max_model_len
        self.registry = registry
        self.started = started

    def _base_card(self) -> ModelCard:
        return ModelCard(id=self.base_id, created=self.started, root=self.base_path,
                         max_model_len=self.max_model_len)

    def _adapter_card(self, record, alias: str | None = None) -> ModelCard:
        public = record.public()
        facts = {k: public[k] for k in ("rank", "alpha", "target_modules", "source", "manifest",
                                        "method", "engine")}
        if alias is not None:
            facts["alias_for"] = record.name
        return ModelCard(
            id=alias or record.name, created=record.created, root=record.path,
            parent=self.base_id, max_model_len=self.max_model_len, adapter=facts,
        )

    def _alias_cards(self, scope: str | None) -> list[ModelCard]:
        cards = []
        for alias, target in self.registry.aliases.all().items():
            record = self.registry.get(target)
            # A target that failed to restore is not servable.
            if record is not None and resolve_visible(self.registry, alias, scope):
                cards.append(self._adapter_card(record, alias))
        return cards

    def list(self, scope: str | None = None) -> ModelList:
        """The base first, then adapters oldest first, then aliases by name."""
        cards = [self._base_card(), *(self._adapter_card(r) for r in self.registry.list(scope)),
                 *self._alias_cards(scope)]
        return ModelList(data=cards)

    def get(self, model_id: str, scope: str | None = None) -> ModelCard:
        if model_id == self.base_id:
            return self._base_card()
        record = resolve_visible(self.registry, model_id, scope)
        if record is None:  # absent or another project's: the same 404 (no leak)
            raise ModelNotFound(f"The model `{model_id}` does not exist.", param="model")
        return self._adapter_card(record, model_id if record.name != model_id else None)
