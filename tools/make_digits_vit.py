"""Train a small ViT on the bundled digits and export it and a tiny BERT with torch's exporter.

    python -m tools.make_digits_vit          # needs the `train` extra (torch) and scikit-learn

The ViT (issue 13): 2x2 patches of the 8x8 image (16 tokens) embedded by a strided Conv, a class
token, learned position embeddings, ``DEPTH`` pre-norm blocks (LayerNorm, multi-head attention
written out as plain MatMuls, LayerNorm, MLP with exact-erf GELU), a final LayerNorm and a linear
head on the class token. It is trained on the digits split of ``tools.make_digits_models``
(seed 0, 70/30; AdamW, one-cycle schedule, seeded) and exported by the
TorchScript exporter (``dynamo=False``, constant folding, batch dimension "N") at opset 17
(LayerNormalization nodes) to models/digits_vit.onnx and at opset 13 (LayerNorm decomposed into
ReduceMean/Sub/Pow/Sqrt/Div) to models/digits_vit_op13.onnx. Input "image" float32 [N,1,8,8],
output "logits" float32 [N,10].

The BERT (``export_bert``): seeded random weights, vocabulary 64, 16 tokens, width 32, 2 post-norm
blocks of 2 heads, MLP 64, a tanh pooler on the first token and a 2-class classifier. Inputs
"input_ids" int64 [N,16] and "attention_mask" float32 [N,16] (1 = token, 0 = padding), output
"logits" float32 [N,2]; written to models/bert_tiny_torch.onnx (opset 17) with a sample,
models/bert_tiny_ids.npy (int64 [4,16]) and models/bert_tiny_mask.npy (float32 [4,16], padded).

Tests build their own copies: ``export_vit(path, opset, epochs=0)`` (untrained, fast) and
``export_bert(path, opset)``.
"""

from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np

from tools.make_digits_models import MODELS, SEED, digits_split

PATCH, DIM, DEPTH, HEADS, MLP = 2, 64, 3, 4, 128
EPOCHS = 150
BERT = dict(vocab=64, seq=16, dim=32, depth=2, heads=2, mlp=64, classes=2)


def _torch_modules():
    """The ``Attention``, ``ViT`` and ``Bert`` classes (defined lazily: torch is optional)."""
    import torch
    import torch.nn as nn

    class Attention(nn.Module):
        """Multi-head self-attention with explicit q/k/v projections; ``mask`` is added to the
        scores (broadcast to [B, H, S, S]); the scale is a Mul (``div=False``) or a Div."""

        def __init__(self, dim, heads, div=False):
            super().__init__()
            self.heads, self.dh, self.div = heads, dim // heads, div
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)

        def split(self, x):
            b, s, _ = x.shape
            return x.reshape(b, s, self.heads, self.dh).transpose(1, 2)

        def forward(self, x, mask=None):
            b, s, d = x.shape
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            scores = q @ k.transpose(-2, -1)
            scores = scores / math.sqrt(self.dh) if self.div else scores * self.dh ** -0.5
            if mask is not None:
                scores = scores + mask
            y = scores.softmax(dim=-1) @ v
            return self.proj(y.transpose(1, 2).reshape(b, s, self.heads * self.dh))

    class Block(nn.Module):
        """Pre-norm (ViT) or post-norm (BERT) transformer block."""

        def __init__(self, dim, heads, mlp, pre_norm):
            super().__init__()
            self.pre_norm = pre_norm
            eps = 1e-6 if pre_norm else 1e-12
            self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
            self.attn = Attention(dim, heads, div=not pre_norm)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x, mask=None):
            if self.pre_norm:
                x = x + self.attn(self.norm1(x), mask)
                return x + self.mlp(self.norm2(x))
            x = self.norm1(x + self.attn(x, mask))
            return self.norm2(x + self.mlp(x))

    class ViT(nn.Module):
        def __init__(self, image=8, channels=1, patch=PATCH, dim=DIM, depth=DEPTH, heads=HEADS,
                     mlp=MLP, classes=10):
            super().__init__()
            tokens = (image // patch) ** 2 + 1
            self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
            self.blocks = nn.ModuleList(Block(dim, heads, mlp, True) for _ in range(depth))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x)[:, 0])

    class Bert(nn.Module):
        def __init__(self, vocab, seq, dim, depth, heads, mlp, classes):
            super().__init__()
            self.words, self.positions = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
            self.types = nn.Embedding(2, dim)
            self.register_buffer("position_ids", torch.arange(seq)[None])
            self.norm = nn.LayerNorm(dim, eps=1e-12)
            self.blocks = nn.ModuleList(Block(dim, heads, mlp, False) for _ in range(depth))
            self.pooler, self.classifier = nn.Linear(dim, dim), nn.Linear(dim, classes)

        def forward(self, input_ids, attention_mask):
            types = torch.zeros_like(self.position_ids)
            x = self.words(input_ids) + self.positions(self.position_ids) + self.types(types)
            x = self.norm(x)
            mask = (1.0 - attention_mask[:, None, None, :]) * -10000.0
            for block in self.blocks:
                x = block(x, mask)
            return self.classifier(self.pooler(x[:, 0]).tanh())

    return ViT, Bert


def train_vit(xtr: np.ndarray, ytr: np.ndarray, epochs: int = EPOCHS):
    """The digits ViT after ``epochs`` of AdamW (batch 64, weight decay 0.1, one-cycle schedule:
    10 % linear warm-up to lr 3e-3, cosine decay), seeded and deterministic; ``epochs=0`` gives
    the seeded initial weights."""
    import torch
    torch.manual_seed(SEED)
    vit, _ = _torch_modules()
    net = vit()
    if not epochs:
        return net.eval()
    torch.use_deterministic_algorithms(True)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * -(-len(xtr) // 64),
                                                pct_start=0.1)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return net.eval()


def bert_module(seed: int = SEED, **shape):
    """The BERT-style encoder with seeded random weights (N(0, 0.02) weights and embeddings,
    LayerNorm gamma 1 + N(0, 0.1), N(0, 0.02) biases; the pooler and classifier N(0, 1/dim), so
    that the logits are of order 1 and differ between inputs); ``shape`` overrides ``BERT``."""
    import torch
    _, bert = _torch_modules()
    torch.manual_seed(seed)
    net = bert(**{**BERT, **shape})
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
            else:
                p.normal_(0, 0.02)
        for head in (net.pooler, net.classifier):
            head.weight.normal_(0, head.in_features ** -0.5)
    return net.eval()


def _export(net, args, path, opset, inputs, dynamic):
    """The TorchScript exporter (deliberately: the dynamo one does not write opset 13)."""
    import torch
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, args, path, dynamo=False, opset_version=opset,
                          do_constant_folding=True, input_names=inputs, output_names=["logits"],
                          dynamic_axes={**{k: {0: "N"} for k in dynamic}, "logits": {0: "N"}})


def export_vit(path: str, opset: int = 17, epochs: int = 0, net=None):
    """Export the digits ViT (``net``, or ``train_vit`` for ``epochs``, 0 = untrained) to
    ``path``; returns the torch module."""
    import torch
    if net is None:
        xtr, _, ytr, _ = digits_split()
        net = train_vit(xtr, ytr, epochs)
    _export(net, (torch.zeros(1, 1, 8, 8),), path, opset, ["image"], ["image"])
    return net


def bert_sample(seed: int = SEED, n: int = 4, **shape):
    """``n`` random token sequences (int64 [n, seq]) and their masks (float32; sequence i keeps
    ``seq - 3 * i`` tokens, the rest is padding with id 0)."""
    cfg = {**BERT, **shape}
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg["vocab"], (n, cfg["seq"])).astype(np.int64)
    mask = np.ones((n, cfg["seq"]), np.float32)
    for i in range(n):
        keep = max(1, cfg["seq"] - 3 * i)
        mask[i, keep:], ids[i, keep:] = 0, 0
    return ids, mask


def export_bert(path: str, opset: int = 17, seed: int = SEED, **shape):
    """Export ``bert_module(seed, **shape)`` to ``path``; returns the torch module."""
    import torch
    net = bert_module(seed, **shape)
    ids, mask = bert_sample(seed, 1, **shape)
    _export(net, (torch.from_numpy(ids), torch.from_numpy(mask)), path, opset,
            ["input_ids", "attention_mask"], ["input_ids", "attention_mask"])
    return net


def _ort(path: str, feeds: dict) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def main() -> None:
    import torch
    torch.set_num_threads(2)
    xtr, xte, ytr, yte = digits_split()
    start = time.perf_counter()
    net = train_vit(xtr, ytr)
    print(f"digits_vit: trained {EPOCHS} epochs in {time.perf_counter() - start:.0f} s")
    with torch.no_grad():
        want = net(torch.from_numpy(xte)).numpy()
    print(f"digits_vit: test accuracy {(want.argmax(1) == yte).mean():.4f} (torch)")
    for name, opset in (("digits_vit", 17), ("digits_vit_op13", 13)):
        path = os.path.join(MODELS, f"{name}.onnx")
        export_vit(path, opset, net=net)
        got = _ort(path, {"image": xte})
        assert np.allclose(got, want, atol=1e-4), "ONNX export disagrees with torch"
        print(f"{name}: test accuracy {(got.argmax(1) == yte).mean():.4f} (onnxruntime, "
              f"opset {opset}), {os.path.getsize(path) / 1e3:.0f} kB")
    path = os.path.join(MODELS, "bert_tiny_torch.onnx")
    bert = export_bert(path, 17)
    ids, mask = bert_sample()
    with torch.no_grad():
        want = bert(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = _ort(path, {"input_ids": ids, "attention_mask": mask})
    assert np.allclose(got, want, atol=1e-5), "ONNX export disagrees with torch"
    np.save(os.path.join(MODELS, "bert_tiny_ids.npy"), ids)
    np.save(os.path.join(MODELS, "bert_tiny_mask.npy"), mask)
    print(f"bert_tiny_torch: logits {np.round(got.astype(float), 4).tolist()}, "
          f"{os.path.getsize(path) / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
