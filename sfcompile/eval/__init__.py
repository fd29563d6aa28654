"""Evaluation: perplexity on named texts, calibration windows, zero-shot accuracy through lm-eval.

    from sfcompile.eval import perplexity, zeroshot
    perplexity(model, tok, "wiki", seqlen=512)
    zeroshot(model, tok, "piqa,arc_easy", limit=100)
"""

from sfcompile.eval.perplexity import perplexity, windows_perplexity
from sfcompile.eval.texts import calibration_windows, get_text
from sfcompile.eval.zeroshot import zeroshot

__all__ = ["calibration_windows", "get_text", "perplexity", "windows_perplexity", "zeroshot"]
