"""The direct call of an exported program: the outputs and the guards of ``ExportedProgram.module()``."""

from __future__ import annotations

import io

import pytest
import torch
from torch.export import Dim

from inference_worker.exported import direct_call


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class _Nested(torch.nn.Module):
    """Two inputs sharing the batch dim; a tuple and a dict out."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.linear(x) + y, {"total": x.sum(1)}


class _Counting(torch.nn.Module):
    """A buffer updated in place by every call."""

    calls: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return x + self.calls


class _Keyword(torch.nn.Module):
    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return x * scale


BATCH = Dim("batch", min=1, max=8)


def _loaded(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    kwargs: dict[str, torch.Tensor] | None = None,
    dynamic_shapes: dict[str, dict[int, Dim]] | None = None,
) -> torch.nn.Module:
    """Export ``module`` (batch dim 1..8), save and load it as a worker does, and return ``.module()``."""
    shapes = dynamic_shapes or tuple({0: BATCH} for _ in example)
    program = torch.export.export(module.eval(), example, kwargs=kwargs, dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer).module()


def test_a_single_output_comes_out_as_module_gives_it_at_every_batch_size() -> None:
    torch.manual_seed(0)
    module = _loaded(_Linear(), (torch.randn(2, 4),))
    call = direct_call(module)
    assert call is not None
    for batch in (1, 3, 8):
        x = torch.randn(batch, 4)
        assert torch.equal(call(x), module(x))


def test_nested_outputs_keep_their_structure() -> None:
    torch.manual_seed(0)
    module = _loaded(_Nested(), (torch.randn(2, 4), torch.randn(2, 3)))
    call = direct_call(module)
    assert call is not None
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    got, expected = call(x, y), module(x, y)
    assert isinstance(got, tuple) and torch.equal(got[0], expected[0])
    assert list(got[1]) == ["total"] and torch.equal(got[1]["total"], expected[1]["total"])


def test_a_buffer_updated_in_place_is_the_modules_own() -> None:
    module = _loaded(_Counting(), (torch.zeros(2, 3),))
    call = direct_call(module)
    assert call is not None
    x = torch.zeros(1, 3)
    assert torch.equal(module(x), torch.ones(1, 3))
    assert torch.equal(call(x), torch.full((1, 3), 2.0))
    assert torch.equal(module(x), torch.full((1, 3), 3.0))


@pytest.mark.parametrize(
    ("shape", "why"), [((9, 4), r"x.size\(\)\[0\] <= 8"), ((2, 5), r"x.size\(\)\[1\] == 4")]
)
def test_the_guards_still_refuse_what_the_program_was_not_exported_for(
    shape: tuple[int, int], why: str
) -> None:
    module = _loaded(_Linear(), (torch.randn(2, 4),))
    call = direct_call(module)
    assert call is not None
    with pytest.raises(AssertionError, match=why):
        module(torch.randn(shape))
    with pytest.raises(AssertionError, match=why):
        call(torch.randn(shape))


def test_inputs_that_are_not_all_positional_keep_the_module() -> None:
    module = _loaded(
        _Keyword(),
        (torch.randn(2, 4),),
        kwargs={"scale": torch.randn(2, 4)},
        dynamic_shapes={"x": {0: BATCH}, "scale": {0: BATCH}},
    )
    assert direct_call(module) is None


def test_modules_that_are_not_exported_programs_are_left_alone() -> None:
    assert direct_call(_Linear()) is None
    assert direct_call(torch.fx.symbolic_trace(_Linear())) is None
