"""Tiny randomly initialised BERT models saved to a folder, built at test time: real
config and tokenizer files (a WordPiece vocabulary of the given words), random weights.
They check an engine's plumbing (loading, batching, labels, offsets, windows), not its
quality. Needs transformers and tokenizers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def save_tiny_bert(
    path: Path,
    head: str,
    labels: Sequence[str],
    words: Iterable[str],
    *,
    max_tokens: int = 32,
    problem_type: str | None = None,
    seed: int = 0,
    label_bias: Mapping[str, float] | None = None,
    hidden: int = 16,
    layers: int = 1,
    heads: int = 2,
    intermediate: int = 32,
) -> Path:
    """A ``transformers.<head>`` (e.g. ``BertForTokenClassification``) with ``labels``
    (id order) and a tokenizer knowing ``words``, saved under ``path``. ``label_bias``
    is added to the head's bias of those labels (e.g. -10 for ``O``: every token is then
    some entity, whatever the random weights). ``hidden``, ``layers``, ``heads`` and
    ``intermediate`` (the feed-forward width) size it: a benchmark's model has a real
    one's shape."""
    import tokenizers
    import torch
    import transformers

    # Lowercased, as the normalizer lowercases the text.
    known = sorted({w.lower() for w in words})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *known])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=max_tokens,
    )
    extra: dict[str, Any] = {"problem_type": problem_type} if problem_type else {}
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max(64, max_tokens),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config)
    with torch.no_grad():
        for label, bias in (label_bias or {}).items():
            model.classifier.bias[list(labels).index(label)] += bias
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
