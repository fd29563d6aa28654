"""Perplexity with the standard protocol of the pruning literature (SparseGPT, Wanda, SparseForge).

Join the documents with "\\n\\n", tokenize once, cut the token stream into non-overlapping windows of
``seqlen`` (the tail shorter than a window is dropped), and report exp of the mean next-token NLL over every
predicted token (``seqlen - 1`` per window).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sfcompile.eval.texts import tokenize_documents


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def token_windows(tokenizer, text, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """The evaluation windows: (W, seqlen) LongTensor of consecutive, non-overlapping slices of the token
    stream."""
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2 (one token predicts the next), got {seqlen}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
    ids = tokenize_documents(tokenizer, text)
    n = ids.numel() // seqlen
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)


def perplexity(
    model,
    tokenizer,
    text,
    seqlen: int = 512,
    *,
    max_windows: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> float:
    """Perplexity of ``model`` on ``text``.

    Args:
        model: a causal LM (HF ``...ForCausalLM``, soft-masked or hardened); evaluated on the device it
            lives on.
        tokenizer: its tokenizer.
        text: a named text (``"wiki"``), a file path, a list of documents, or a raw string (see
            ``texts.resolve_documents``).
        seqlen: window length in tokens.
        max_windows: evaluate only the first ``max_windows`` windows (a prefix of the text; fast checks).
        batch_size: windows per forward pass.
        progress: show a tqdm bar.

    Returns:
        exp(mean NLL over all predicted tokens).

    Example:
        >>> model, tok = sfcompile.load("smollm2-135m")
        >>> perplexity(model, tok, "wiki", seqlen=512)
    """
    windows = token_windows(tokenizer, text, seqlen, max_windows)
    return windows_perplexity(model, windows, batch_size=batch_size, progress=progress)


@torch.no_grad()
def windows_perplexity(model, windows: torch.Tensor, *, batch_size: int = 1, progress: bool = True) -> float:
    """Perplexity over pre-cut ``windows`` ((W, T) LongTensor, e.g. from ``token_windows``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        for start in tqdm(
            range(0, len(windows), batch_size),
            desc=f"perplexity ({len(windows)} x {windows.shape[1]} tokens)",
            unit="batch",
            disable=not progress,
        ):
            batch = windows[start : start + batch_size].to(device)  # (B, T)
            logits = model(input_ids=batch, use_cache=False).logits  # (B, T, V)
            # Position t predicts token t+1; the loss is taken in float32 whatever the model dtype.
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                batch[:, 1:].reshape(-1),
                reduction="sum",
            )
            nll += loss.double().cpu()
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    mean = (nll / count).item()
    if not math.isfinite(mean):
        raise FloatingPointError(
            f"perplexity is not finite (mean NLL {mean}) over {count} tokens: the model "
            f"produced inf/nan logits"
        )
    return math.exp(mean)
