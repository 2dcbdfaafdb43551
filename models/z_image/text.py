"""Prompt -> caption features: Qwen3 chat template, hidden state of layer -2, padding removed, cached."""

from __future__ import annotations

from collections import OrderedDict

import torch

from engine.errors import SettingsError

MAX_TOKENS = 512


class _EarlyExit(Exception):
    def __init__(self, hidden):
        self.hidden = hidden


class PromptEncoder:
    """Encodes prompts with the text encoder, running only the layers the wanted hidden state needs.

    `hidden_layer` counts like `hidden_states[i]` of transformers (-2: the input of the last layer), so
    the last layer, the final norm and the LM head are never run for conditioning (the enhancer runs them).
    Results are cached (LRU) per prompt and layer.
    """

    def __init__(self, text_encoder, tokenizer, cache_size: int = 64):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size
        self.calls = 0  # text-encoder forward passes, for the benchmark

    def encode(self, prompts: list[str], hidden_layer: int = -2) -> list[torch.Tensor]:
        """One [tokens, hidden] tensor per prompt (the prompt's real tokens only)."""
        missing = [p for p in dict.fromkeys(prompts) if (p, hidden_layer) not in self.cache]
        if missing:
            for prompt, feats in zip(missing, self._run(missing, hidden_layer)):
                self.cache[(prompt, hidden_layer)] = feats
        out = []
        for prompt in prompts:
            self.cache.move_to_end((prompt, hidden_layer))
            out.append(self.cache[(prompt, hidden_layer)])
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out

    def template(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=True)

    @torch.no_grad()
    def _run(self, prompts: list[str], hidden_layer: int) -> list[torch.Tensor]:
        enc = self.tokenizer([self.template(p) for p in prompts], padding="longest", max_length=MAX_TOKENS,
                             truncation=True, return_tensors="pt")
        device = self.text_encoder.device  # an mmgp profile reports the GPU its hooks move weights to
        ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device).bool()
        hidden = self._hidden_state(ids, mask, hidden_layer)
        self.calls += 1
        return [hidden[i][mask[i]] for i in range(len(prompts))]

    def _hidden_state(self, ids, mask, hidden_layer: int = -2) -> torch.Tensor:
        """hidden_states[hidden_layer] (-2 or lower) without running the layers after it."""
        layers = self.text_encoder.model.layers
        last = len(layers) + hidden_layer  # index of the layer whose output is wanted
        if not (0 <= last < len(layers) and hidden_layer <= -2):
            raise SettingsError(f"text hidden layer {hidden_layer} is out of range: this encoder has "
                                f"{len(layers)} layers (use -2 to -{len(layers)})")

        def stop(_module, _inputs, output):
            raise _EarlyExit(output[0] if isinstance(output, tuple) else output)

        handle = layers[last].register_forward_hook(stop)
        try:
            self.text_encoder.model(input_ids=ids, attention_mask=mask, use_cache=False)
        except _EarlyExit as done:
            return done.hidden
        finally:
            handle.remove()
        raise RuntimeError("the text encoder finished without reaching the wanted layer")
