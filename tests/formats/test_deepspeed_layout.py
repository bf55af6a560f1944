"""Where `deepspeed_layout` places each parameter, against partitions built the way DeepSpeed
builds them (stage_1_and_2.py: flatten with per-parameter alignment padding, pad the group
to a multiple of the world size, cut into `world` partitions, strip the padding off the last
one; stage3.py: each parameter padded to a multiple of `world`, rank r taking the r-th
share), for any shapes, world sizes and paddings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpttool.formats.deepspeed_layout import Layout, partitioned, zero3

shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=6)


def _named(groups: list[list[tuple[int, ...]]]) -> list[dict[str, tuple[int, ...]]]:
    return [{f"g{g}.p{i}": shape for i, shape in enumerate(group)} for g, group in enumerate(groups)]


def _values(named: list[dict[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    count = sum(torch.Size(s).numel() for group in named for s in group.values())
    flat = torch.arange(1, count + 1, dtype=torch.float32)
    out, done = {}, 0
    for group in named:
        for name, shape in group.items():
            numel = torch.Size(shape).numel()
            out[name] = flat[done : done + numel].reshape(shape)
            done += numel
    return out


def _read(layout: Layout, parts: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        name: torch.cat([parts[p.rank][p.group][p.start : p.start + p.count] for p in places] or [torch.zeros(0)])
        for name, places in layout.places.items()
    }


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.lists(shapes, min_size=1, max_size=3), st.integers(1, 4), st.integers(0, 3), st.data())
def test_zero12_places(groups: list[list[tuple[int, ...]]], world: int, align: int, data: st.DataObject) -> None:
    named = _named(groups)
    values = _values(named)
    paddings = [[data.draw(st.integers(0, align)) for _ in group] for group in named]
    parts: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for group, after in zip(named, paddings, strict=True):
        pieces = [
            torch.cat([values[n].reshape(-1), torch.full((pad,), -1.0)]) for n, pad in zip(group, after, strict=True)
        ]
        flat = torch.cat(pieces or [torch.zeros(0)])
        padded = torch.cat([flat, torch.full((-flat.numel() % world,), -2.0)])
        for rank, part in enumerate(padded.chunk(world) if padded.numel() else [torch.zeros(0)] * world):
            parts[rank].append(
                part if rank < world - 1 else part[: max(0, flat.numel() - rank * (padded.numel() // world))]
            )
    layout = partitioned(named, [[t.numel() for t in rank] for rank in parts], paddings)
    read = _read(layout, parts)
    for name, value in values.items():
        assert torch.equal(read[name], value.reshape(-1)), name
        assert len(layout.places[name]) <= world


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(shapes, st.integers(1, 4), st.integers(1, 3))
def test_zero3_places(group: list[tuple[int, ...]], world: int, sub_groups: int) -> None:
    named = _named([group])
    values = _values(named)
    ranks: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for value in values.values():
        flat = value.reshape(-1)
        share = -(-flat.numel() // world)
        padded = torch.cat([flat, torch.full((share * world - flat.numel(),), -1.0)])
        for rank in range(world):
            ranks[rank].append(padded[rank * share : (rank + 1) * share])
    whole = [torch.cat(r or [torch.zeros(0)]) for r in ranks]
    cut = sorted({whole[0].numel() * i // sub_groups for i in range(sub_groups + 1)})
    parts = [[w[a:b] for a, b in zip(cut, cut[1:], strict=False)] or [w] for w in whole]
    layout = zero3(named, [[t.numel() for t in rank] for rank in parts])
    read = _read(layout, parts)
    for name, value in values.items():
        assert torch.equal(read[name], value.reshape(-1)), name
