#!/usr/bin/env python3
"""PyTorch side of `rkd bench train`: the same configs, batch, threads and step definitions.

BERT-mini (vocab 30522, 4 layers, hidden 256, 4 heads, intermediate 1024, GELU(erf), post-LN,
dropout 0.1, pooler + 2-class head; seq 64) and ViT (224 px, patch 16, 6 layers, hidden 192,
3 heads, intermediate 768, pre-LN, no dropout, 3 classes), batch 32, f32, seeded random inputs.

Train step = forward in train mode (dropout on) + cross-entropy + `loss.item()` + backward +
`clip_grad_norm_(1.0)` + AdamW (lr 1e-4, wd 0.01, no decay on biases and LayerNorm weights,
as rkd). Inference = eval-mode forward under `torch.no_grad()` with the logits copied to host.
Each is the median of `--steps` timed runs after `--warmup` untimed ones (rkd: 1).

Uses transformers' BertForSequenceClassification / ViTForImageClassification when transformers
imports, else hand-written models of the same architecture (`--hand-written` forces them).
`--json` prints `{"bert_mini": {"train_step_s": .., "infer_s": ..}, "vit": {...}, "device": "cpu", "cpu": {...}}`
like `rkd bench train --json`; otherwise a table. `--device cuda` runs on a GPU (every step
synchronized before the clock stops), adds BERT-base (seq 128) and ViT-B/16, and reports each
case's peak GPU memory (`peak_mem_bytes`).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 0
BATCH = 32


# ---------------------------------------------------------------- hand-written fallback models


class Attention(nn.Module):
    """Multi-head self-attention with HF's query/key/value/output layout (eager softmax)."""

    def __init__(self, hidden, heads, dropout):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        b, s, h = x.shape

        def split(t):
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = self.dropout(scores.softmax(-1))
        return self.dense((probs @ v).transpose(1, 2).reshape(b, s, h))


class Layer(nn.Module):
    """A transformer layer, post-LN (BERT) or pre-LN (ViT)."""

    def __init__(self, hidden, heads, inter, dropout, eps, pre_ln):
        super().__init__()
        self.pre_ln = pre_ln
        self.attn = Attention(hidden, heads, dropout)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)
        self.inter = nn.Linear(hidden, inter)
        self.out = nn.Linear(inter, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if self.pre_ln:
            x = x + self.dropout(self.attn(self.ln1(x)))
            return x + self.dropout(self.out(F.gelu(self.inter(self.ln2(x)))))
        x = self.ln1(x + self.dropout(self.attn(x)))
        return self.ln2(x + self.dropout(self.out(F.gelu(self.inter(x)))))


class HandBert(nn.Module):
    """BERT for sequence classification (embeddings + LN + dropout, post-LN layers, tanh pooler)."""

    def __init__(self, vocab, hidden, layers, heads, inter, labels, max_pos=512, dropout=0.1, eps=1e-12):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_pos, hidden)
        self.typ = nn.Embedding(2, hidden)
        self.ln = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(Layer(hidden, heads, inter, dropout, eps, False) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, labels)

    def forward(self, input_ids):
        s = input_ids.shape[1]
        pos = torch.arange(s).unsqueeze(0)
        x = self.word(input_ids) + self.pos(pos) + self.typ(torch.zeros_like(input_ids))
        x = self.dropout(self.ln(x))
        for layer in self.layers:
            x = layer(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(self.dropout(pooled))


class HandVit(nn.Module):
    """ViT for image classification (conv patch embedding, CLS token, pre-LN layers, final LN)."""

    def __init__(self, image, patch, channels, hidden, layers, heads, inter, labels, eps=1e-12):
        super().__init__()
        n = (image // patch) ** 2
        self.proj = nn.Conv2d(channels, hidden, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, hidden) * 0.02)
        self.layers = nn.ModuleList(Layer(hidden, heads, inter, 0.0, eps, True) for _ in range(layers))
        self.ln = nn.LayerNorm(hidden, eps=eps)
        self.classifier = nn.Linear(hidden, labels)

    def forward(self, pixels):
        x = self.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.ln(x)[:, 0])


# ---------------------------------------------------------------- the cases


# key: (kind, hidden, layers, heads, intermediate, labels, sequence length); as `rkd bench train`.
CASES = {
    "bert_mini": ("bert", 256, 4, 4, 1024, 2, 64),
    "vit": ("vit", 192, 6, 3, 768, 3, 0),
    "bert_base": ("bert", 768, 12, 12, 3072, 2, 128),
    "vit_base": ("vit", 768, 12, 12, 3072, 3, 0),
}
LABELS = {"bert_mini": "BERT-mini", "vit": "ViT", "bert_base": "BERT-base", "vit_base": "ViT-B/16"}


def build(key, hand_written, attn, device):
    """The model of case `key` on `device` and a function from (model) to logits on the case's inputs."""
    kind, hidden, layers, heads, inter, n_labels, seq = CASES[key]
    g = torch.Generator().manual_seed(SEED)
    transformers = None
    if not hand_written:
        try:
            import transformers  # noqa: F811
        except ImportError:
            transformers = None
    if kind == "bert":
        ids = torch.randint(0, 30522, (BATCH, seq), generator=g).to(device)
        labels = torch.randint(0, n_labels, (BATCH,), generator=g).to(device)
        if transformers is not None:
            cfg = transformers.BertConfig(
                vocab_size=30522,
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=inter,
                num_labels=n_labels,
                attn_implementation=attn,
            )
            model = transformers.BertForSequenceClassification(cfg).to(device)
            return model, (lambda m: m(input_ids=ids).logits), labels, "transformers"
        model = HandBert(30522, hidden, layers, heads, inter, n_labels).to(device)
        return model, (lambda m: m(ids)), labels, "hand-written"
    pixels = torch.randn(BATCH, 3, 224, 224, generator=g).to(device)
    labels = torch.randint(0, n_labels, (BATCH,), generator=g).to(device)
    if transformers is not None:
        cfg = transformers.ViTConfig(
            image_size=224,
            patch_size=16,
            num_channels=3,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            num_labels=n_labels,
            attn_implementation=attn,
        )
        model = transformers.ViTForImageClassification(cfg).to(device)
        return model, (lambda m: m(pixel_values=pixels).logits), labels, "transformers"
    model = HandVit(224, 16, 3, hidden, layers, heads, inter, n_labels).to(device)
    return model, (lambda m: m(pixels)), labels, "hand-written"


def param_groups(model, weight_decay):
    """AdamW groups: no weight decay on biases and LayerNorm parameters (as rkd's optimiser)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        lower = name.lower()
        skip = lower.endswith("bias") or "layernorm" in lower or "layer_norm" in lower or ".ln" in lower
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def timed(steps, warmup, f, device):
    """Median wall time of `steps` calls of f after `warmup` untimed ones (each waits for the GPU)."""
    samples = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        f()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bench_case(key, steps, warmup, hand_written, attn, device):
    """{"train_step_s", "infer_s"} (and on a GPU "peak_mem_bytes") of one case, and which implementation ran."""
    torch.manual_seed(SEED)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, logits_of, labels, impl = build(key, hand_written, attn, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(logits_of(model), labels)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"the loss is {value}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad():
            logits_of(model).cpu().numpy()

    train = timed(steps, warmup, train_step, device)
    inference = timed(steps, max(warmup, 1), infer, device)
    out = {"train_step_s": train, "infer_s": inference}
    if device.type == "cuda":
        out["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
    return out, impl


ISA_CAPS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_info():
    """The CPU capability torch dispatches to, and the environment variables that cap its libraries."""
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return {
        "capability": get() if get else "unknown",
        "caps": {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (rkd bench train: 1)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--hand-written", action="store_true", help="use the hand-written models, not transformers'")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention implementation")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (on a GPU, BERT-base and ViT-B/16 too)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    keys = ["bert_mini", "vit"] + (["bert_base", "vit_base"] if device.type == "cuda" else [])
    results, impls = {}, {}
    for key in keys:
        results[key], impls[key] = bench_case(
            key, max(args.steps, 1), args.warmup, args.hand_written, args.attn, device
        )
    cpu = cpu_info()
    if args.json:
        print(json.dumps(dict(results, device=str(device), cpu=cpu, torch=torch.__version__)))
        return 0
    print(f"{'model':<10}  {'train step s':>12}  {'train ex/s':>10}  {'inference s':>12}  {'infer ex/s':>10}")
    for key in keys:
        label = LABELS[key]
        t = results[key]
        print(
            f"{label:<10}  {t['train_step_s']:>12.3f}  {BATCH / t['train_step_s']:>10.1f}  "
            f"{t['infer_s']:>12.3f}  {BATCH / t['infer_s']:>10.1f}"
        )
    print(
        f"(torch {torch.__version__}, {impls['bert_mini']} models, f32, batch {BATCH}, median of {args.steps} steps "
        f"after {args.warmup} warm-up; {args.threads} threads; on {device}; CPU capability {cpu['capability']}"
        + "".join(f", {k}={v}" for k, v in cpu["caps"].items())
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
