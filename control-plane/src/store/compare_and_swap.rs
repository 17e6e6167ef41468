//! The one retry policy for read-modify-write cycles over a record
//! ([`Store::record_compare_and_swap`](super::Store::record_compare_and_swap)): read,
//! decide, swap, and start again from a fresh read when another writer got there first.
//!
//! Every lost round means some other writer's swap went through, so the replicas as a
//! whole always make progress; the bound only ends a writer that keeps losing, such as
//! one of many replicas writing one lockout subject during a password-spraying burst.
//! It is generous so that such a writer still gets through under any contention the
//! tests and deployments produce, and the caller then answers "busy" (503) rather than
//! looping forever.

use std::future::Future;

/// Compare-and-swap rounds one read-modify-write may take before it gives up.
pub const CAS_ATTEMPTS: usize = 128;

/// What one round of a read-modify-write concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasRound<T> {
    /// Finished: the swap went through, or there was nothing to write.
    Done(T),
    /// The record changed since it was read: read it again.
    Lost,
}

/// Runs `round` until it is [`CasRound::Done`], at most [`CAS_ATTEMPTS`] times; then
/// `contended`. An error of a round ends the cycle at once.
///
/// `round` makes a new future per round (`|| async move { … }` over shared references):
/// such futures are `Send` whenever what they hold is, which the request handlers need.
pub async fn retry_compare_and_swap<T, E, Round>(
    contended: E,
    mut round: impl FnMut() -> Round,
) -> Result<T, E>
where
    Round: Future<Output = Result<CasRound<T>, E>>,
{
    for _ in 0..CAS_ATTEMPTS {
        if let CasRound::Done(value) = round().await? {
            return Ok(value);
        }
    }
    Err(contended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_round_is_retried_while_it_loses_and_gives_up_after_the_last_attempt() {
        let mut rounds = 0;
        let won = retry_compare_and_swap("contended", || {
            rounds += 1;
            let round = rounds;
            async move { Ok(if round < 3 { CasRound::Lost } else { CasRound::Done(round) }) }
        })
        .await;
        assert_eq!(won, Ok(3));

        let mut rounds = 0;
        let lost: Result<(), _> = retry_compare_and_swap("contended", || {
            rounds += 1;
            async { Ok(CasRound::Lost) }
        })
        .await;
        assert_eq!((lost, rounds), (Err("contended"), CAS_ATTEMPTS));

        let failed: Result<(), _> = retry_compare_and_swap("contended", || async { Err("store down") }).await;
        assert_eq!(failed, Err("store down"), "an error is not retried");
    }
}
