"""Prompt encoding with a bounded LRU cache (each distinct prompt is encoded once)."""

from __future__ import annotations

from collections import OrderedDict

import torch

from .loading import Components


class PromptEncoder:
    """`encode(prompt)` -> (embeds (1,77,D), pooled (1,P) or None); cached by prompt text."""

    def __init__(self, components: Components, max_entries: int = 32) -> None:
        self.c = components
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.encoder_calls = 0

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        hit = self._cache.get(prompt)
        if hit is not None:
            self._cache.move_to_end(prompt)
            return hit
        value = self._encode(prompt)
        self._cache[prompt] = value
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return value

    def encode_negative(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unconditional embeddings. An empty negative prompt gives zeros where the model asks
        for that (SDXL's `force_zeros_for_empty_prompt`), as diffusers does."""
        hidden, pooled = self.encode(prompt)
        if prompt == "" and getattr(self.c, "force_zeros_for_empty_prompt", False):
            return torch.zeros_like(hidden), None if pooled is None else torch.zeros_like(pooled)
        return hidden, pooled

    @torch.no_grad()
    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.encoder_calls += 1
        if self.c.family != "sdxl":
            hidden = self.c.text_encoder(self._ids(self.c.tokenizer, prompt))[0]
            return hidden.to(self.c.dtype), None
        # SDXL: penultimate hidden states of both encoders, concatenated; pooled from encoder 2.
        out1 = self.c.text_encoder(self._ids(self.c.tokenizer, prompt), output_hidden_states=True)
        out2 = self.c.text_encoder_2(self._ids(self.c.tokenizer_2, prompt), output_hidden_states=True)
        hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        return hidden.to(self.c.dtype), out2[0].to(self.c.dtype)

    def _ids(self, tokenizer, prompt: str) -> torch.Tensor:
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return ids.to(self.c.device)
