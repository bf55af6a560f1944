"""Where each parameter lies in the flat partitions a ZeRO optimizer saves, one per rank.

ZeRO-1/2 (and BF16_Optimizer) flatten each parameter group, in `param_shapes` order, into
one vector and cut it into `world` consecutive partitions: rank r saves the r-th. A
parameter is the slice of that vector at its offset, found in at most `world` partitions
(the padding that aligns the vector is at its end, on the last rank: fewer than `SPARE` x
world elements).

ZeRO-3 partitions each parameter on its own: every rank holds `ceil(numel / world)` of its
elements (the last one padded), one parameter after another in `param_shapes` order, in
the concatenation of the rank's flat groups (several when `sub_group_size` splits them),
which they fill exactly.
A parameter is rank 0's slice, then rank 1's, ..., cut to its size.

The same places hold each parameter's Adam moments, in the optimizer state's tensors of
the same partitions: a `Place` list is bound to whichever per-rank tensors are asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

# ZeRO-1/2 pad each group's flat vector to a multiple of (a small factor) x world; more
# elements to spare than this says the partitions are not the parameters' (another model's)
SPARE = 16


@dataclass(frozen=True)
class Place:
    """`count` elements from `start` of rank `rank`'s flat tensor number `group`."""

    rank: int
    group: int
    start: int
    count: int


@dataclass
class Layout:
    """Each trainable parameter's shape and places, in `param_shapes` order."""

    shapes: dict[str, tuple[int, ...]]
    places: dict[str, list[Place]]
    groups: dict[str, int]  # the flat tensor (ZeRO-1/2 group, ZeRO-3 sub-group) it lies in first
    used: int  # elements the parameters take of each rank's partitions together
    held: int  # elements the partitions hold


class LayoutError(ValueError):
    """The partitions do not hold what `param_shapes` declares (the caller names the folder)."""


def partitioned(
    shapes: list[dict[str, tuple[int, ...]]], sizes: list[list[int]], paddings: list[list[int]] | None = None
) -> Layout:
    """ZeRO-1/2: `sizes[rank][group]` elements in each rank's partition of each group;
    `paddings[group][i]` elements after the group's i-th parameter (`parameter_alignment`)."""
    layout = Layout({}, {}, {}, 0, sum(map(sum, sizes)))
    for group, group_shapes in enumerate(shapes):
        bounds = _bounds([rank_sizes[group] for rank_sizes in sizes])
        after = paddings[group] if paddings is not None else [0] * len(group_shapes)
        if len(after) != len(group_shapes):
            raise LayoutError(
                f"{len(after)} alignment paddings for the {len(group_shapes)} parameters of group {group}"
            )
        offset = 0
        for (name, shape), padding in zip(group_shapes.items(), after, strict=True):
            numel = prod(shape)
            if offset + numel > bounds[-1]:
                raise LayoutError(
                    f"parameter {name!r} ends at element {offset + numel} of group {group}, whose "
                    f"partitions hold {bounds[-1]}"
                )
            layout.shapes[name], layout.groups[name] = shape, group
            layout.places[name] = [Place(p.group, group, p.start, p.count) for p in _within(offset, numel, bounds)]
            offset += numel + padding
        if bounds[-1] - offset >= SPARE * len(sizes):
            raise LayoutError(
                f"the parameters of group {group} take {offset} elements, its partitions hold {bounds[-1]}"
            )
        layout.used += offset
    return layout


def zero3(shapes: list[dict[str, tuple[int, ...]]], sizes: list[list[int]]) -> Layout:
    """ZeRO-3: `sizes[rank][group]`, the same for every rank."""
    world = len(sizes)
    if any(s != sizes[0] for s in sizes):
        raise LayoutError(f"ranks hold flat groups of different sizes: {sizes[0]} and others")
    bounds = _bounds(sizes[0])
    layout = Layout({}, {}, {}, 0, bounds[-1] * world)
    offset = 0
    for name, shape in ((n, s) for group in shapes for n, s in group.items()):
        numel = prod(shape)
        share = -(-numel // world)
        if offset + share > bounds[-1]:
            raise LayoutError(
                f"parameter {name!r} ends at element {offset + share} of each rank's flat groups, which hold "
                f"{bounds[-1]}"
            )
        places: list[Place] = []
        for rank in range(world):
            take = min(share, numel - rank * share)
            if take > 0:
                places.extend(Place(rank, p.group, p.start, p.count) for p in _within(offset, take, bounds))
        layout.shapes[name], layout.places[name] = shape, places
        layout.groups[name] = _within(offset, max(share, 1), bounds)[0].group if bounds[-1] else 0
        offset += share
    if offset != bounds[-1]:
        raise LayoutError(f"the parameters take {offset} elements of each rank's flat groups, which hold {bounds[-1]}")
    layout.used = offset * world
    return layout


def _bounds(sizes: list[int]) -> list[int]:
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return bounds


def _within(offset: int, numel: int, bounds: list[int]) -> list[Place]:
    """Elements [offset, offset + numel) of a vector made of pieces ending at `bounds[1:]`:
    (piece index, start in it, count) for each piece they touch, as Places with rank 0."""
    out: list[Place] = []
    end = offset + numel
    for index in range(len(bounds) - 1):
        lo, hi = max(offset, bounds[index]), min(end, bounds[index + 1])
        if lo < hi:
            out.append(Place(0, index, lo - bounds[index], hi - lo))
    return out
