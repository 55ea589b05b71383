"""A ViT classifier and a BERT encoder. Attention is spelled out with MatMul/Softmax and
shape-driven Reshapes (as HF/timm exports look), not fused into one op."""

from __future__ import annotations

import math

import torch
from torch import nn

from .spec import InputSpec, ZooEntry, image_input, pick


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        # Sizes come from x.shape, so the exporter emits Shape->Gather->Concat->Reshape chains.
        return x.view(x.shape[0], x.shape[1], self.heads, self.hd).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.hd)
        if bias is not None:
            s = s + bias
        o = torch.matmul(s.softmax(-1), v).transpose(1, 2)
        return self.proj(o.reshape(x.shape[0], x.shape[1], -1))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class PreNormBlock(nn.Module):
    """ViT block: x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.ln2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, res: int, patch: int, dim: int, depth: int, heads: int, classes: int
                 ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (res // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(PreNormBlock(dim, heads, 4 * dim) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class PostNormLayer(nn.Module):
    """BERT layer: LN(x + attn(x)); LN(x + ffn(x))."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attn, self.ln1 = Attention(dim, heads), nn.LayerNorm(dim, eps=1e-12)
        self.ffn, self.ln2 = Mlp(dim, ffn), nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, bias))
        return self.ln2(x + self.ffn(x))


class Bert(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.word, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.token_type = nn.Embedding(2, dim)
        self.register_buffer("position_ids", torch.arange(max_len).unsqueeze(0), persistent=False)
        self.ln = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(PostNormLayer(dim, heads, 4 * dim) for _ in range(depth))
        self.pool = nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self.position_ids[:, : input_ids.shape[1]]  # Slice driven by the dynamic length
        x = self.word(input_ids) + self.pos(pos) + self.token_type(torch.zeros_like(input_ids))
        x = self.ln(x)
        # HF's extended mask: 0 where attended, a large negative where padded.
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        return x, torch.tanh(self.pool(x[:, 0]))


VIT = {"small": dict(res=32, patch=8, dim=32, depth=2, heads=2, classes=10),
       "full": dict(res=224, patch=16, dim=192, depth=12, heads=3, classes=1000)}  # ViT-Ti/16
BERT = {"small": dict(vocab=100, dim=32, depth=2, heads=2, max_len=64, seq=16),
        "full": dict(vocab=30522, dim=512, depth=4, heads=8, max_len=512, seq=128)}


def vit(size: str) -> ViT:
    c = pick(VIT, size)
    return ViT(c["res"], c["patch"], c["dim"], c["depth"], c["heads"], c["classes"])


def bert(size: str) -> Bert:
    c = pick(BERT, size)
    return Bert(c["vocab"], c["dim"], c["depth"], c["heads"], c["max_len"])


def bert_inputs(size: str) -> tuple[InputSpec, ...]:
    c = pick(BERT, size)
    axes = ((0, "batch"), (1, "sequence"))
    return (InputSpec("input_ids", (1, c["seq"]), "ids", c["vocab"], axes),
            InputSpec("attention_mask", (1, c["seq"]), "mask", 2, axes))


ENTRIES = [
    ZooEntry("vit_tiny", "transformer",
             "ViT-Ti/16: patch-embed Conv, LayerNorm, GELU, MatMul/Softmax attention",
             vit, lambda s: image_input(pick(VIT, s)["res"])),
    ZooEntry("bert", "transformer",
             "BERT encoder: Gather embeddings, post-LN layers, GELU, masked attention, pooler",
             bert, bert_inputs, outputs=("last_hidden_state", "pooler_output")),
]
