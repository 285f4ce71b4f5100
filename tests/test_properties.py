"""Property tests (hypothesis) against independent references: the row split of torch.distributed, SelMatch's
window against Python's stable ``sorted``, the path guard against a plain string rule, the option checker
against ``isinstance``, and the CLI's range types."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdd.cli import _at_least, _fraction, _positive
from fastdd.distributed import split_rows
from fastdd.errors import UnsafePathError
from fastdd.io import inside
from fastdd.options import matches
from fastdd.selection import window_indices

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(m=st.integers(1, 500), world=st.integers(1, 40))
def test_split_rows_covers_every_row_once_and_balances(m, world):
    if m < world:
        with pytest.raises(ValueError, match=f"use at most {m} processes"):
            split_rows(m, world)
        return
    ranges = split_rows(m, world)
    assert len(ranges) == world and ranges[0][0] == 0 and ranges[-1][1] == m
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in rank order
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # the first m % world get one more


@SETTINGS
@given(data=st.data(), k=st.integers(1, 4), ipc=st.integers(1, 4), hardest=st.sampled_from(["low", "high"]))
def test_window_indices_equal_a_stable_python_sort(data, k, ipc, hardest):
    per = data.draw(st.lists(st.integers(ipc, 12), min_size=k, max_size=k))
    labels = [c for c, n in enumerate(per) for _ in range(n)]
    order = data.draw(st.permutations(range(len(labels))))
    labels = [labels[i] for i in order]  # classes interleaved in the data set
    scores = data.draw(st.lists(st.integers(0, 5), min_size=len(labels), max_size=len(labels)))  # many ties
    beta = data.draw(st.sampled_from([0.0, 0.5, 1.0, 1.5]))
    start = int(ipc * beta)
    if any(start + ipc > n for n in per):
        with pytest.raises(ValueError):
            window_indices(labels, [float(s) for s in scores], ipc, beta, hardest=hardest)
        return
    got = window_indices(labels, [float(s) for s in scores], ipc, beta, hardest=hardest).tolist()
    want = []
    for c in range(k):
        members = [i for i in range(len(labels)) if labels[i] == c]  # ascending dataset index
        ranked = sorted(members, key=lambda i: scores[i], reverse=hardest == "high")  # stable: ties keep index order
        want += ranked[start : start + ipc]
    assert got == want


_PART = st.sampled_from(["a", "b.bin", "..", ".", "sub", "x..y", "~"])


@SETTINGS
@given(parts=st.lists(_PART, min_size=1, max_size=4), absolute=st.booleans())
def test_inside_accepts_exactly_the_names_that_stay_in_the_folder(tmp_path, parts, absolute):
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    name = ("/" if absolute else "") + "/".join(parts)
    # the rule, spelled independently: relative, no '..' component, no leading '~', and not the folder itself
    depth, ok = 0, not absolute and not name.startswith("~")
    for p in parts:
        if p == "..":
            ok = False
        elif p != ".":
            depth += 1
    ok = ok and depth > 0
    if ok:
        assert inside(folder, name, source="i.json", field="file") == folder / os.path.normpath(name)
    else:
        with pytest.raises(UnsafePathError, match=r"i\.json: field 'file'"):
            inside(folder, name, source="i.json", field="file")


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@SETTINGS
@given(value=_VALUES)
def test_matches_agrees_with_isinstance_on_json_values(value):
    is_bool = isinstance(value, bool)
    assert matches(value, int) == (isinstance(value, int) and not is_bool)
    assert matches(value, float) == (isinstance(value, (int, float)) and not is_bool)
    assert matches(value, bool) == is_bool
    assert matches(value, str | None) == (value is None or isinstance(value, str))
    assert matches(value, tuple[int, int]) == (isinstance(value, list) and len(value) == 2)
    assert matches(value, dict) == isinstance(value, dict)


@SETTINGS
@given(
    text=st.one_of(
        st.integers(-10, 10).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=4)
    )
)
def test_cli_range_types_accept_exactly_the_numbers_in_range(text):
    def parsed(fn):
        try:
            return fn(text)
        except argparse.ArgumentTypeError:
            return None

    try:
        as_int = int(text)
    except ValueError:
        as_int = None
    assert parsed(_at_least(1)) == (as_int if as_int is not None and as_int >= 1 else None)
    try:
        as_float = float(text)
    except ValueError:
        as_float = None
    finite = as_float is not None and as_float == as_float and abs(as_float) != float("inf")
    assert parsed(_positive) == (as_float if finite and as_float > 0 else None)
    assert parsed(_fraction) == (as_float if finite and 0 < as_float < 1 else None)


def test_window_indices_tensor_and_list_inputs_agree():
    labels, scores = [0, 1, 0, 1, 0, 1], [3.0, 1.0, 3.0, 2.0, 0.0, 2.0]
    assert torch.equal(
        window_indices(labels, scores, 2, 0.0), window_indices(torch.tensor(labels), torch.tensor(scores), 2, 0.0)
    )
