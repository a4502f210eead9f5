//! The statements this crate runs on apalis-postgres's job table itself, in
//! one place: what a worker does with a job it refuses to run.
//!
//! Both touch only a job still held by a worker (`Queued` or `Running`), by
//! id. apalis-postgres then records the task's result where the job is still
//! locked by the worker that ran it (`lock_by`): after these statements it is
//! not, so the result does not overwrite what they did.

use std::time::Duration;

use sqlx::PgPool;

use crate::error::{Error, Result};

/// Back to `Pending`, fetched again after `$2` seconds, unlocked, the
/// refusal as its last result; its attempts are not counted (it did not run).
const RESCHEDULE: &str = "UPDATE apalis.jobs \
     SET status = 'Pending', run_at = now() + make_interval(secs => $2), \
         lock_by = NULL, lock_at = NULL, done_at = NULL, last_result = $3 \
     WHERE id = $1 AND status IN ('Queued', 'Running')";

/// Gone without a trace.
const DELETE: &str = "DELETE FROM apalis.jobs WHERE id = $1 AND status IN ('Queued', 'Running')";

/// Puts the job `id` back, to be tried again after `delay`, with `reason` as
/// its last result.
pub(crate) async fn reschedule(
    pool: &PgPool,
    id: &str,
    delay: Duration,
    reason: &str,
) -> Result<()> {
    sqlx::query(RESCHEDULE)
        .bind(id)
        .bind(delay.as_secs_f64())
        .bind(serde_json::json!({ "Err": reason }))
        .execute(pool)
        .await
        .map_err(Error::db("rescheduling a refused job"))?;
    Ok(())
}

/// Deletes the job `id`.
pub(crate) async fn delete(pool: &PgPool, id: &str) -> Result<()> {
    sqlx::query(DELETE)
        .bind(id)
        .execute(pool)
        .await
        .map_err(Error::db("dropping a refused job"))?;
    Ok(())
}
