"""A plain PyTorch GPT-2-style model and AdamW step: the reference for speed comparisons.

The same architecture as `llmos_jax.models.DecoderLM` with a GPT-2 config
(learned positions, pre-norm LayerNorm with bias, tanh-GELU MLP of width
`mlp_dim`, biases everywhere, tied token embedding / LM head, no dropout),
written the way nanoGPT writes it: eager mode, no `torch.compile`, float32.
`TorchGPTConfig` switches turn it into nanoGPT's shakespeare_char model
(`bias=False`, `gelu_approximate="none"`, `dropout`); its initialisation is
nanoGPT's (normal 0.02, residual projections 0.02 / sqrt(2 * num_layers)).
The optimizer matches `llmos_jax.training.optimizers.make_optimizer("adamw")`:
global-norm clipping to 1.0, AdamW(b1, b2, eps) with decoupled weight decay on
matrices and embeddings only (not on biases or norm parameters).

PyTorch is an optional dependency (`pip install -e '.[reference]'`); nothing in
`llmos_jax` imports this file.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class TorchGPTConfig:
    vocab_size: int
    num_layers: int
    num_heads: int
    embed_dim: int
    max_len: int
    mlp_dim: int | None = None
    # "sdpa": F.scaled_dot_product_attention(is_causal=True), what nanoGPT uses
    # when PyTorch has it (a fused flash-attention kernel on CPU too);
    # "manual": softmax(QK^T/sqrt(d) + causal mask) V written out, nanoGPT's fallback.
    attention: str = "sdpa"
    init_std: float = 0.02
    # nanoGPT's `bias` flag: False drops the biases of every Linear and
    # LayerNorm (its shakespeare_char runs use False).
    bias: bool = True
    # "tanh" (GPT-2's approximation) or "none" (exact erf GELU, nanoGPT's nn.GELU()).
    gelu_approximate: str = "tanh"
    norm_eps: float = 1e-5
    # nanoGPT's dropout: on the embeddings, the attention probabilities and both
    # residual branches; active in train() mode only.
    dropout: float = 0.0
    # "learned" (GPT-2's position table) or "rope": rotary embedding of queries
    # and keys, llmos_jax's `apply_rope` pairing (feature i with i + dim/2).
    position_embedding: str = "learned"
    rope_theta: float = 10_000.0

    @property
    def hidden(self) -> int:
        return self.mlp_dim or 4 * self.embed_dim


def rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of `x` [batch, heads, length, dim], positions 0..length-1."""
    length, dim = x.shape[-2], x.shape[-1]
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=x.device) / dim)
    angles = torch.arange(length, dtype=torch.float32, device=x.device)[:, None] * freqs
    sin, cos = torch.sin(angles), torch.cos(angles)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, c: TorchGPTConfig):
        super().__init__()
        self.num_heads = c.num_heads
        self.rope_theta = c.rope_theta if c.position_embedding == "rope" else None
        self.attention = c.attention
        self.dropout = c.dropout
        self.resid_dropout = nn.Dropout(c.dropout)
        # One fused q/k/v projection, as nanoGPT: same parameters and FLOPs as
        # llmos_jax's separate query/key/value kernels.
        self.c_attn = nn.Linear(c.embed_dim, 3 * c.embed_dim, bias=c.bias)
        self.c_proj = nn.Linear(c.embed_dim, c.embed_dim, bias=c.bias)
        if c.attention == "manual":
            mask = torch.tril(torch.ones(c.max_len, c.max_len, dtype=torch.bool))
            self.register_buffer("mask", mask.view(1, 1, c.max_len, c.max_len), persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        h = self.num_heads
        q = q.view(b, t, h, d // h).transpose(1, 2)
        k = k.view(b, t, h, d // h).transpose(1, 2)
        v = v.view(b, t, h, d // h).transpose(1, 2)
        if self.rope_theta is not None:
            q, k = rotate(q, self.rope_theta), rotate(k, self.rope_theta)
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~self.mask[:, :, :t, :t], float("-inf"))
            att = F.dropout(F.softmax(att, dim=-1), self.dropout, self.training)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(b, t, d)
        return self.resid_dropout(self.c_proj(y))


def _layer_norm(c: TorchGPTConfig) -> nn.LayerNorm:
    # bias=False is nanoGPT's LayerNorm(ndim, bias=False): a scale, no shift.
    return nn.LayerNorm(c.embed_dim, eps=c.norm_eps, bias=c.bias)


class Block(nn.Module):
    def __init__(self, c: TorchGPTConfig):
        super().__init__()
        self.ln_1 = _layer_norm(c)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = _layer_norm(c)
        self.c_fc = nn.Linear(c.embed_dim, c.hidden, bias=c.bias)
        self.c_proj = nn.Linear(c.hidden, c.embed_dim, bias=c.bias)
        self.gelu_approximate = c.gelu_approximate
        self.mlp_dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        hidden = F.gelu(self.c_fc(self.ln_2(x)), approximate=self.gelu_approximate)
        return x + self.mlp_dropout(self.c_proj(hidden))


class TorchGPT(nn.Module):
    def __init__(self, c: TorchGPTConfig):
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.embed_dim)
        if c.position_embedding not in ("learned", "rope"):
            raise ValueError(f"position_embedding must be 'learned' or 'rope', got "
                             f"{c.position_embedding!r}")
        self.wpe = nn.Embedding(c.max_len, c.embed_dim) if c.position_embedding == "learned" else None
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.num_layers)])
        self.ln_f = _layer_norm(c)
        self.embed_dropout = nn.Dropout(c.dropout)
        self.apply(self._init)
        out_std = c.init_std / math.sqrt(2 * c.num_layers)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, out_std)

    def _init(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.wte(tokens)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(t, device=tokens.device))
        x = self.embed_dropout(x)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied LM head

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def make_adamw(model: TorchGPT, *, learning_rate: float, b1: float, b2: float, eps: float,
               weight_decay: float, implementation: str = "foreach",
               decay_embeddings: bool = True) -> torch.optim.AdamW:
    """AdamW with decay on >= 2-D weights (matrices, embeddings) only.

    That is nanoGPT's `configure_optimizers` rule and llmos_jax's default mask.
    `decay_embeddings=False` also exempts the token and position tables.
    """
    embeddings = {id(model.wte.weight)} | ({id(model.wpe.weight)} if model.wpe is not None else set())

    def decays(p: torch.Tensor) -> bool:
        return p.dim() >= 2 and (decay_embeddings or id(p) not in embeddings)

    decay = [p for p in model.parameters() if decays(p)]
    no_decay = [p for p in model.parameters() if not decays(p)]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    extra = {"foreach": {"foreach": True}, "fused": {"fused": True},
             "for-loop": {"foreach": False}}[implementation]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(b1, b2), eps=eps, **extra)


def make_train_step(model: TorchGPT, optimizer: torch.optim.Optimizer, grad_clip: float = 1.0):
    """One full step: forward, cross-entropy, backward, clip, AdamW update. Returns the loss."""
    vocab = model.config.vocab_size

    def step(inputs, targets):
        logits = model(inputs)
        loss = F.cross_entropy(logits.view(-1, vocab), targets.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return loss

    return step
