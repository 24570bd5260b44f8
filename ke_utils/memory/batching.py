"""Text to batches: tokenise documents and group them by length so little compute goes to padding.

Documents are never packed into one sequence: attention would then cross document boundaries
and change the coefficients. Length-bucketing keeps every document exact and wastes only the
padding up to the next document length in the same batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

import torch


def iter_texts(texts, text_column: str = "text", max_docs: int | None = None) -> Iterator[str]:
    """Strings from a list of strings, a ``datasets.Dataset``/``IterableDataset`` or any iterable
    of strings or dicts (``text_column`` names the field). Stops after ``max_docs``."""
    if isinstance(texts, str):
        raise TypeError("texts must be a collection of documents, not a single string")
    for i, item in enumerate(islice(texts, max_docs)):
        text = item[text_column] if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise TypeError(f"document {i} is {type(text).__name__}, expected str")
        yield text


def tokenize_documents(
    tokenizer,
    texts: Iterable[str],
    max_tokens_per_doc: int | None = 512,
    add_special_tokens: bool = True,
    chunk: int = 256,
) -> Iterator[list[int]]:
    """Token ids per document (truncated to ``max_tokens_per_doc``), tokenised in chunks;
    empty documents are skipped."""
    buffer: list[str] = []

    def flush():
        encoded = tokenizer(
            buffer,
            add_special_tokens=add_special_tokens,
            truncation=max_tokens_per_doc is not None,
            max_length=max_tokens_per_doc,
        )["input_ids"]
        buffer.clear()
        return [ids for ids in encoded if ids]

    for text in texts:
        buffer.append(text)
        if len(buffer) == chunk:
            yield from flush()
    if buffer:
        yield from flush()


def pad_batch(
    docs: Sequence[Sequence[int]],
    pad_id: int,
    padding_side: str = "right",
    pad_to: int | None = None,
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[batch, length]`` (int64), padded to the longest
    document or to ``pad_to``."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    length = max(len(d) for d in docs)
    if pad_to is not None:
        if pad_to < length:
            raise ValueError(f"pad_to={pad_to} is shorter than a document ({length} tokens)")
        length = pad_to
    ids = torch.full((len(docs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(docs), length), dtype=torch.long)
    for row, doc in enumerate(docs):
        span = slice(length - len(doc), length) if padding_side == "left" else slice(0, len(doc))
        ids[row, span] = torch.tensor(doc, dtype=torch.long)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def length_bucketed_batches(
    docs: Sequence[Sequence[int]],
    pad_id: int,
    max_batch_tokens: int = 8192,
    max_batch_size: int = 64,
    padding_side: str = "right",
    pad_to: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Batches of documents sorted by length so that ``batch * longest <= max_batch_tokens``.

    With ``pad_to`` every document is padded to that fixed length (the original study's layout).
    """
    if not docs:
        raise ValueError("no documents to batch (empty input, or every document was empty)")
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]), reverse=True)
    batches, current = [], []
    for i in order:
        if current:
            longest = pad_to or len(docs[current[0]])  # sorted: the first is the longest
            if (len(current) + 1) * longest > max_batch_tokens or len(current) >= max_batch_size:
                batches.append(pad_batch([docs[j] for j in current], pad_id, padding_side, pad_to))
                current = []
        current.append(i)
    batches.append(pad_batch([docs[j] for j in current], pad_id, padding_side, pad_to))
    return batches


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its end-of-text id (padding is masked out anyway)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError("tokenizer has neither a pad token nor an end-of-text token; set tokenizer.pad_token")


def measurement_batches(docs: Sequence[Sequence[int]], pad_id: int, weighting: str = "token",
                        max_tokens_per_doc: int = 512, max_batch_tokens: int = 8192) -> list[dict[str, torch.Tensor]]:
    """Token-id documents in length-bucketed, right-padded batches for a measurement with
    ``weighting`` (see :func:`~ke_utils.memory.entropy.coefficient_means`): each batch padded to its
    longest document, or, for ``"original"``, every document padded to ``max_tokens_per_doc`` (the
    original study's layout, which that weighting counts). The one place that decides it."""
    return length_bucketed_batches(docs, pad_id, max_batch_tokens=max_batch_tokens, padding_side="right",
                                   pad_to=max_tokens_per_doc if weighting == "original" else None)


def text_batches(tokenizer, texts, max_tokens_per_doc: int = 512, max_batch_tokens: int = 8192) -> list[dict]:
    """``texts`` tokenised and length-bucketed into padded batches, ready for :func:`coefficient_means`."""
    docs = list(tokenize_documents(tokenizer, iter_texts(texts), max_tokens_per_doc))
    return measurement_batches(docs, pad_token_id(tokenizer), max_tokens_per_doc=max_tokens_per_doc,
                               max_batch_tokens=max_batch_tokens)
