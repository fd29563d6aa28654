import torch

from sfcompile.opcount import OpCount


def test_opcount_counts_compute_ops_and_views_only_when_asked():
    x = torch.randn(4, 4)
    with OpCount() as compute:
        (x.t() @ x).sum()                  # t is a view: mm and sum compute
    with OpCount(views=True) as every:
        (x.t() @ x).sum()
    assert compute.n == 2
    assert every.n == 3
