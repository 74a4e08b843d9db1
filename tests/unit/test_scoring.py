import pytest

from controller.core.scoring import MAX_SEQ, ready_score


def test_higher_priority_sorts_first() -> None:
    assert ready_score(100, 10**9) < ready_score(99, 0) < ready_score(0, 0) < ready_score(-100, 0)


def test_fifo_within_a_priority() -> None:
    assert ready_score(5, 1) < ready_score(5, 2) < ready_score(5, MAX_SEQ)


def test_scores_are_exact_doubles() -> None:
    worst = ready_score(-100, MAX_SEQ)
    assert worst < 2**53
    assert float(worst) == worst
    assert float(worst - 1) != float(worst)


@pytest.mark.parametrize(("priority", "seq"), [(101, 0), (-101, 0), (0, -1), (0, MAX_SEQ + 1)])
def test_out_of_range(priority: int, seq: int) -> None:
    with pytest.raises(ValueError):
        ready_score(priority, seq)
