"""Beat's claim sizes within one tick (pure)."""

from __future__ import annotations

from workers import beat


def test_next_claim_doubles_up_to_the_cap_and_ends_on_a_short_claim() -> None:
    assert beat.next_claim(beat.FIRST_CLAIM, beat.FIRST_CLAIM) == 2 * beat.FIRST_CLAIM
    assert beat.next_claim(beat.CLAIM_BATCH, beat.CLAIM_BATCH) == beat.CLAIM_BATCH
    assert beat.next_claim(beat.CLAIM_BATCH // 2 + 1, beat.CLAIM_BATCH // 2 + 1) == beat.CLAIM_BATCH
    assert beat.next_claim(beat.FIRST_CLAIM, beat.FIRST_CLAIM - 1) is None
    assert beat.next_claim(beat.FIRST_CLAIM, 0) is None
