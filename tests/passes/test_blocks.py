import pytest
import torch
from torch import nn

from sfcompile.passes.blocks import repeated_blocks


@pytest.mark.parametrize(
    "family, prefix",
    [("llama", "model.layers"), ("gpt2", "transformer.h"), ("opt", "model.decoder.layers"),
     ("gpt_neox", "gpt_neox.layers"), ("qwen3_moe", "model.layers")],
)
def test_finds_decoder_layers_in_order(tiny_model, family, prefix):
    model = tiny_model(family, num_hidden_layers=3, **({"n_layer": 3} if family == "gpt2" else {}))
    blocks = repeated_blocks(model)
    assert [name for name, _ in blocks] == [f"{prefix}.{i}" for i in range(3)]
    assert all(block is model.get_submodule(name) for name, block in blocks)


class _Toy(nn.Module):
    """A small same-class list (the 'heads') and a bigger one (the blocks), plus a mixed-class list."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(4, 4) for _ in range(6)])
        self.mixed = nn.ModuleList([nn.Linear(64, 64), nn.Conv1d(64, 64, 3), nn.Linear(64, 64)])
        self.body = nn.Sequential(nn.ModuleList([nn.Linear(16, 16) for _ in range(2)]))


def test_largest_same_class_list_wins_and_mixed_lists_are_ignored():
    model = _Toy()
    blocks = repeated_blocks(model)
    # mixed holds the most parameters but is not one class; heads has more children but fewer parameters.
    assert [name for name, _ in blocks] == ["body.0.0", "body.0.1"]


def test_no_block_list_is_an_error_naming_the_way_out():
    with pytest.raises(ValueError, match="magnitude"):
        repeated_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    with pytest.raises(ValueError, match="Sequential"):
        repeated_blocks(nn.Sequential(nn.ModuleList([nn.ReLU(), nn.ReLU()])))  # no parameters


def test_parameters_counted_per_list_not_per_child():
    model = nn.Module()
    model.a = nn.ModuleList([nn.Linear(8, 8) for _ in range(4)])  # 4 * 72 = 288
    model.b = nn.ModuleList([nn.Linear(16, 16)])  # 272
    assert [n for n, _ in repeated_blocks(model)] == [f"a.{i}" for i in range(4)]
    assert torch.is_tensor(next(repeated_blocks(model)[0][1].parameters()))
