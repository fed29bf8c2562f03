//! The idempotency claim decision, written once: what a request holding an `Idempotency-Key` may do, given
//! what the store keeps for that key. Like the lifecycle plans, it is pure (no I/O, no clock: the adapter
//! passes its own `now`); each SQL adapter reads the kept row under its lock, asks [`decide_claim`], and
//! carries the answer out.

use time::OffsetDateTime;

/// What a store keeps for one key, as [`decide_claim`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptKey<'a> {
    /// The fingerprint of the request that first claimed the key.
    pub fingerprint: &'a str,
    /// Whether that request's answer is kept (the claim is completed).
    pub done: bool,
    /// Until when the running claim's holder keeps others out; `None` once completed.
    pub locked_until: Option<OffsetDateTime>,
    /// When the key is forgotten.
    pub expires_at: OffsetDateTime,
}

/// What the adapter does with a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimDecision {
    /// The key belongs to another request: 422 `IDEMPOTENCY_KEY_REUSED`; change nothing.
    Mismatch,
    /// The same request already ran: replay the kept answer; change nothing.
    Replay,
    /// The same request is running under a live lease: 409 `IDEMPOTENCY_KEY_IN_USE`; change nothing.
    InUse,
    /// The same request was running but its lease ran out (its holder died): give the claim to the new
    /// holder with a fresh lease, keeping the key's expiry.
    TakeOver,
    /// Nothing live is kept for the key (never seen, or expired): write a fresh running claim.
    Fresh,
}

/// Decides a claim for a request with `fingerprint` at `now`.
///
/// A key is live while `now < expires_at`, and a lease holds while `now < locked_until`: at the very instant
/// a lease or a key ends, it has ended. The holder does not enter the decision: every run claims with a
/// token of its own, so a second claim is always another run, even one with the same token.
pub fn decide_claim(kept: Option<&KeptKey<'_>>, fingerprint: &str, now: OffsetDateTime) -> ClaimDecision {
    match kept {
        Some(k) if k.expires_at > now => {
            if k.fingerprint != fingerprint {
                ClaimDecision::Mismatch
            } else if k.done {
                ClaimDecision::Replay
            } else if k.locked_until.is_some_and(|until| until > now) {
                ClaimDecision::InUse
            } else {
                ClaimDecision::TakeOver
            }
        }
        _ => ClaimDecision::Fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use time::Duration;

    const NOW: OffsetDateTime = datetime!(2026-11-27 12:00:00 UTC);

    fn running(lease_ends: OffsetDateTime) -> KeptKey<'static> {
        KeptKey { fingerprint: "fp", done: false, locked_until: Some(lease_ends), expires_at: NOW + Duration::DAY }
    }

    #[test]
    fn an_unknown_key_is_fresh() {
        assert_eq!(decide_claim(None, "fp", NOW), ClaimDecision::Fresh);
    }

    #[test]
    fn a_lease_ending_exactly_now_has_ended() {
        assert_eq!(decide_claim(Some(&running(NOW)), "fp", NOW), ClaimDecision::TakeOver);
        let one_ns = Duration::nanoseconds(1);
        assert_eq!(decide_claim(Some(&running(NOW + one_ns)), "fp", NOW), ClaimDecision::InUse);
        assert_eq!(decide_claim(Some(&running(NOW - one_ns)), "fp", NOW), ClaimDecision::TakeOver);
    }

    #[test]
    fn a_running_claim_without_a_lease_is_taken_over() {
        let k = KeptKey { locked_until: None, ..running(NOW) };
        assert_eq!(decide_claim(Some(&k), "fp", NOW), ClaimDecision::TakeOver);
    }

    #[test]
    fn a_key_expiring_exactly_now_is_forgotten_whatever_it_kept() {
        for k in [
            KeptKey { expires_at: NOW, ..running(NOW + Duration::MINUTE) },
            KeptKey { expires_at: NOW, done: true, locked_until: None, ..running(NOW) },
            KeptKey { expires_at: NOW, fingerprint: "other", ..running(NOW) },
        ] {
            assert_eq!(decide_claim(Some(&k), "fp", NOW), ClaimDecision::Fresh, "{k:?}");
        }
        let live = KeptKey { expires_at: NOW + Duration::nanoseconds(1), done: true, ..running(NOW) };
        assert_eq!(decide_claim(Some(&live), "fp", NOW), ClaimDecision::Replay);
    }

    #[test]
    fn a_different_fingerprint_is_a_mismatch_whatever_the_state() {
        for k in [
            running(NOW + Duration::MINUTE),
            running(NOW - Duration::MINUTE),
            KeptKey { done: true, locked_until: None, ..running(NOW) },
        ] {
            assert_eq!(decide_claim(Some(&k), "another", NOW), ClaimDecision::Mismatch, "{k:?}");
        }
    }

    #[test]
    fn the_same_request_replays_once_done_and_waits_while_leased() {
        let done = KeptKey { done: true, locked_until: None, ..running(NOW) };
        assert_eq!(decide_claim(Some(&done), "fp", NOW), ClaimDecision::Replay);
        // A retry of the same request (same fingerprint; the holder does not matter) while the first runs.
        assert_eq!(decide_claim(Some(&running(NOW + Duration::SECOND)), "fp", NOW), ClaimDecision::InUse);
    }
}
