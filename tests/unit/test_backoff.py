from controller.core.backoff import retry_delay
from controller.model.spec import Backoff

B = Backoff(initialSeconds=1, maxSeconds=300, multiplier=2, jitter=True)


def test_exponential_ceiling_without_jitter() -> None:
    fixed = Backoff(initialSeconds=1, maxSeconds=300, multiplier=2, jitter=False)
    assert [retry_delay(fixed, n) for n in range(5)] == [1, 2, 4, 8, 16]
    assert retry_delay(fixed, 20) == 300


def test_full_jitter_spans_zero_to_ceiling() -> None:
    assert retry_delay(B, 3, rand=lambda: 0.0) == 0.0
    assert retry_delay(B, 3, rand=lambda: 0.5) == 4.0
    assert retry_delay(B, 30, rand=lambda: 0.999) <= 300


def test_retry_after_is_a_floor() -> None:
    assert retry_delay(B, 0, retry_after=7, rand=lambda: 0.1) == 7


def test_retry_after_is_capped_by_the_jobs_max_seconds() -> None:
    assert retry_delay(B, 0, retry_after=10**9, rand=lambda: 0.1) == 300
    assert retry_delay(B, 0, retry_after=float(2**31), rand=lambda: 0.1) == 300
