"""Sentences in, normalised sentence embeddings out, as sentence-transformers' all-MiniLM-L6-v2 computes them.

preprocess tokenizes one request's sentences (the ``tokenizers`` library, tokenizer.json beside the weights,
truncated at 256 tokens as the model was trained); the worker pads requests of different lengths into one
batch; postprocess mean-pools each sentence's token embeddings over its own tokens and normalises the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length
# The model reads a sentence's first 256 tokens (a few KiB of text), but the tokenizer holds the whole of it
# at once before truncating (16 MiB of text: 2.2 GB and 19 s): longer ones are the client's 400.
MAX_TEXT_BYTES = 1 << 20


class MiniLMHandler:
    def setup(self, model_dir: Path, device: torch.device) -> None:
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # within one request: to its longest

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        texts = inputs["text"].reshape(-1)
        for i, text in enumerate(texts):
            if len(text) > MAX_TEXT_BYTES:
                raise ValueError(f"sentence {i} is {len(text)} bytes, more than the {MAX_TEXT_BYTES} allowed")
        sentences = [s.decode("utf-8") for s in texts]  # UnicodeDecodeError: a 400
        encodings = self.tokenizer.encode_batch(sentences)
        return {
            name: torch.from_numpy(np.array([getattr(e, attr) for e in encodings], dtype=np.int64))
            for name, attr in (
                ("input_ids", "ids"),
                ("attention_mask", "attention_mask"),
                ("token_type_ids", "type_ids"),
            )
        }

    def inference(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "token_embeddings": model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        }

    def postprocess(
        self, outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        tokens = outputs["token_embeddings"]  # [sentences, this request's length, 384]: padding cut off
        mask = inputs["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return {"embedding": torch.nn.functional.normalize(pooled, p=2, dim=1)}

    def warmup_inputs(self) -> dict[str, Any]:
        text = np.empty((1, 1), dtype=object)
        text[0, 0] = b"warm up the encoder"
        return {"text": text}
