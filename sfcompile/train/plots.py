"""The end-of-run figure: loss, perplexity, sparsity and temperature against tokens (one PNG)."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path, *, tokens_per_step: int) -> Path | None:
    """Draw ``history`` (RunLogger records) into ``path``; returns None if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval"]

    def series(rows, key):
        pts = [((r["step"]) * tokens_per_step, r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    for key in ("loss", "ce", "kl", "sq"):
        x, y = series(train, key)
        if x:
            ax.plot(x, y, label=key)
    ax.set_title("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax = axes[0][1]
    x, y = series(evals, "ppl")
    if x:
        ax.plot(x, y, "o-")
        ax.set_yscale("log")
    ax.set_title("eval perplexity" + (f" ({evals[0].get('text')})" if evals else ""))
    ax = axes[1][0]
    for key in ("sparsity", "target_sparsity", "hardness"):
        x, y = series(train, key)
        if x:
            ax.plot(x, y, label=key)
    ax.set_title("sparsity / hardness")
    ax.legend()
    ax = axes[1][1]
    x, y = series(train, "temperature")
    if x:
        ax.plot(x, y)
    ax.set_title("gate temperature")
    for row in axes:
        for a in row:
            a.set_xlabel("tokens")
            a.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
