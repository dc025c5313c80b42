"""The served models: the base plus every adapter in the registry."""

from __future__ import annotations

from typing import Any

from service.errors import ModelNotFound
from service.models.protocol import ModelCard, ModelList


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

    def _adapter_card(self, record) -> ModelCard:
        public = record.public()
        return ModelCard(
            id=record.name, created=record.created, root=record.path, parent=self.base_id,
            max_model_len=self.max_model_len,
            adapter={k: public[k] for k in ("rank", "alpha", "target_modules", "source",
                                             "manifest")},
        )

    def list(self) -> ModelList:
        """The base first, then adapters oldest first."""
        cards = [self._base_card(), *(self._adapter_card(r) for r in self.registry.list())]
        return ModelList(data=cards)

    def get(self, model_id: str) -> ModelCard:
        if model_id == self.base_id:
            return self._base_card()
        record = self.registry.get(model_id)
        if record is None:
            raise ModelNotFound(f"The model `{model_id}` does not exist.", param="model")
        return self._adapter_card(record)
