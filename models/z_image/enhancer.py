"""Prompt enhancer: the loaded Qwen3 text encoder, run as the chat model it is, rewrites a short prompt.

No second model and no extra file: conditioning stops at layer -2 of the same weights, while the enhancer
runs the full model (final norm + the output head tied to the input embedding).
"""

from __future__ import annotations

import re
import time

import torch

from engine.errors import UserError

SYSTEM_PROMPT = """You turn a user's image request into one detailed prompt for a text-to-image model.
Rules:
- Keep every core element of the request unchanged: subjects, their number, actions, style, setting.
- When the request implies a design (a poster, a logo, a product, a room), decide a concrete visual plan.
- Add what makes a picture: composition and framing, lighting, materials and textures, colours, mood.
- Any text that must appear in the image goes in double quotes, exactly as it must be written.
- No tag lists and no quality buzzwords such as "8K", "masterpiece" or "best quality".
- Write in plain sentences, at most about 250 words.
Output only the prompt, with no preamble, title or explanation."""

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def strip_thinking(text: str) -> str:
    """Remove any <think>...</think> block (and an unterminated one), quotes and labels around the answer."""
    text = _THINK.sub("", text).replace("</think>", "").strip()
    text = re.sub(r"^(prompt|enhanced prompt)\s*:\s*", "", text, flags=re.IGNORECASE)
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def chat_input(tokenizer, prompt: str, thinking: bool) -> torch.Tensor:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=thinking)
    return tokenizer(text, return_tensors="pt").input_ids


def fit_budget(encoder, text: str) -> str:
    """Cut the rewrite at a sentence end so its conditioning fits the encoder's token budget."""
    from models.z_image.text import MAX_TOKENS

    tok = encoder.tokenizer
    while len(tok(encoder.template(text)).input_ids) > MAX_TOKENS:
        cut = max(text.rfind(". ", 0, len(text) - 1), text.rfind(", ", 0, len(text) - 1))
        text = text[: cut + 1] if cut > 0 else text[: int(len(text) * 0.9)]
    return text.strip()


def sample_token(logits: torch.Tensor, generator: torch.Generator, temperature: float = 0.7, top_k: int = 20,
                 top_p: float = 0.8) -> torch.Tensor:
    """One token id from `logits` [vocab]: temperature, then the top_k most likely, then the smallest set
    of those whose probability reaches top_p."""
    values, ids = torch.topk(logits.float() / temperature, min(top_k, logits.shape[-1]))
    probs = values.softmax(-1)
    keep = probs.cumsum(-1) - probs < top_p  # always keeps the most likely token
    probs = probs * keep
    return ids[torch.multinomial(probs / probs.sum(), 1, generator=generator)]


def generate_tokens(model, ids: torch.Tensor, generator: torch.Generator, max_new_tokens: int, stop_ids: set[int],
                    on_token=None, chunk: int = 64) -> list[int]:
    """Sampled continuation of `ids` [1, prompt_len] by a causal LM, without the prompt. Sampling runs on the
    CPU with the CPU `generator`, so a seed gives the same choices on any device.

    Memory beyond the weights is the KV cache (allocated once for prompt + new tokens) and one chunk's
    activations: the prompt is read `chunk` tokens at a time and only its last position goes through the
    output head."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + max_new_tokens)
    for part in ids.split(chunk, dim=1):
        hidden = model.model(input_ids=part, past_key_values=cache, use_cache=True).last_hidden_state
    logits = model.lm_head(hidden[:, -1])
    out, started = [], time.perf_counter()
    for _ in range(max_new_tokens):
        token = sample_token(logits[0].cpu(), generator)
        out.append(int(token))
        if on_token is not None:
            on_token(len(out), len(out) / max(time.perf_counter() - started, 1e-6))
        if out[-1] in stop_ids or len(out) == max_new_tokens:
            break
        logits = model(input_ids=token.view(1, 1).to(ids.device), past_key_values=cache, use_cache=True).logits[:, -1]
    return out


def _stop_ids(tok) -> set[int]:
    names = ("<|im_end|>", "<|endoftext|>")
    return {tok.convert_tokens_to_ids(n) for n in names if n in tok.get_vocab()} | (
        {tok.eos_token_id} if tok.eos_token_id is not None else set())


@torch.no_grad()
def enhance(encoder, prompt: str, seed: int, thinking: bool = False, max_new_tokens: int = 400,
            on_token=None) -> str:
    """The rewritten prompt. `on_token(n_tokens, tokens_per_second)` may raise Interrupted to stop.

    Sampling is seeded (same seed, same rewrite) with its own generator: the global random state is untouched."""
    model, tok = encoder.text_encoder, encoder.tokenizer
    ids = chat_input(tok, prompt, thinking).to(model.device)
    generator = torch.Generator().manual_seed(seed)
    new = generate_tokens(model, ids, generator, max_new_tokens, _stop_ids(tok), on_token)
    raw = tok.decode(new, skip_special_tokens=False)  # keep <think> to strip it whole
    text = strip_thinking(re.sub(r"<\|[^|>]*\|>", "", raw))
    if not text:
        raise UserError("the enhancer wrote no usable prompt: try another seed, or turn its thinking off")
    return fit_budget(encoder, text)
