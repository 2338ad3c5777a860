import numpy as np
import pytest

from twinv2.offline import DEFAULT_EDGES, completion_groups


def test_default_bins_left_closed_and_unknown_group():
    # ratio:      0    0.1999 0.2  0.5  0.7999 0.8  1.0  3.5  dur=0 dur=NaN dur<0 play=NaN play<0
    play = np.array([0, 1999, 2000, 5000, 7999, 8000, 10000, 35000, 5, 5, 5, np.nan, -1], dtype=float)
    dur = np.array([10000] * 8 + [0, np.nan, -10, 10000, 10000], dtype=float)
    g = completion_groups(play, dur)
    M = len(DEFAULT_EDGES) + 1
    assert M == 5
    # Bins are left-closed: p == 0.2 is in group 1, p == 0.8 and p >= 1 in the top group.
    np.testing.assert_array_equal(g, [0, 0, 1, 2, 3, 4, 4, 4, M, M, M, M, M])
    assert g.dtype == np.int64


def test_integer_inputs_and_custom_edges():
    g = completion_groups(np.array([0, 5, 10, 3], dtype=np.int64), np.array([10, 10, 10, 0], dtype=np.int64), (0.5,))
    np.testing.assert_array_equal(g, [0, 1, 1, 2])


def test_no_edges_is_one_group_plus_unknown():
    g = completion_groups(np.array([0.0, 7.0, 1.0]), np.array([1.0, 1.0, 0.0]), ())
    np.testing.assert_array_equal(g, [0, 0, 1])


def test_empty_input():
    g = completion_groups(np.zeros(0), np.zeros(0))
    assert g.shape == (0,) and g.dtype == np.int64


@pytest.mark.parametrize(
    "edges, bad",
    [((0.4, 0.2), "0.2"), ((0.0, 0.5), "0.0"), ((0.5, 1.0), "1.0"), ((0.3, 0.3), "0.3"), ((-0.1,), "-0.1"),
     ((float("nan"),), "nan")],
)
def test_bad_edges_raise_naming_value(edges, bad):
    with pytest.raises(ValueError, match=bad):
        completion_groups(np.ones(3), np.ones(3), edges)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="equal length"):
        completion_groups(np.ones(3), np.ones(4))
