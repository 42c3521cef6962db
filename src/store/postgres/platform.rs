//! The shared platform state (see [`crate::store::PlatformToken`]): one row per app holding
//! its token and its renewal lock, and the reserved call starts. None of it needs to survive a
//! crash (a lost token costs a login; a lost start is older than a window a moment later), so
//! it commits like a claim, without waiting for the disk.

use super::cached;
use super::{Durability, PgStore, database};
use crate::model::Millis;
use crate::store::{CallLimit, Claimer, PlatformToken, StoreError};

/// The advisory lock that orders the reservations of calls to one app ("platcall" in ASCII,
/// plus the app's hash within the transaction).
const CALLS_LOCK: i32 = 0x706c_6174;

impl PgStore {
    pub(super) fn read_platform_token(
        &self,
        app: &str,
    ) -> Result<Option<PlatformToken>, StoreError> {
        self.with_client(async |client| {
            Ok(cached::query_opt(
                &*client,
                "SELECT access, refresh, renew_at, expires_in FROM platform_tokens
                     WHERE app = $1 AND access IS NOT NULL",
                &[&app],
            )
            .await
            .map_err(database("reading the platform token"))?
            .map(|row| PlatformToken {
                access: row.get(0),
                refresh: row.get(1),
                renew_at: Millis(row.get(2)),
                expires_in: row.get::<_, i64>(3).max(0) as u64,
            }))
        })
    }

    pub(super) fn claim_renewal_for(
        &self,
        app: &str,
        by: &Claimer,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        self.in_transaction(Durability::Claim, async |transaction| {
            let changed = cached::execute(
                transaction,
                "INSERT INTO platform_tokens AS t (app, renewing_by, renewal_until)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (app) DO UPDATE SET renewing_by = EXCLUDED.renewing_by,
                     renewal_until = EXCLUDED.renewal_until
                     WHERE t.renewing_by IS NULL OR t.renewing_by = $2 OR t.renewal_until <= $4",
                &[&app, &by.as_str(), &until.0, &now.0],
            )
            .await
            .map_err(database("claiming the platform token's renewal"))?;
            Ok(changed == 1)
        })
    }

    pub(super) fn store_token_for(
        &self,
        app: &str,
        by: &Claimer,
        token: &PlatformToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let expires_in = i64::try_from(token.expires_in).unwrap_or(i64::MAX);
        self.in_transaction(Durability::Claim, async |transaction| {
            let changed = cached::execute(
                transaction,
                "INSERT INTO platform_tokens AS t (app, access, refresh, renew_at, expires_in)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (app) DO UPDATE SET access = EXCLUDED.access,
                     refresh = EXCLUDED.refresh, renew_at = EXCLUDED.renew_at,
                     expires_in = EXCLUDED.expires_in, renewing_by = NULL, renewal_until = NULL
                     WHERE t.renewing_by IS NULL OR t.renewing_by = $6 OR t.renewal_until <= $7",
                &[
                    &app,
                    &token.access,
                    &token.refresh,
                    &token.renew_at.0,
                    &expires_in,
                    &by.as_str(),
                    &now.0,
                ],
            )
            .await
            .map_err(database("storing the platform token"))?;
            Ok(changed == 1)
        })
    }

    pub(super) fn release_renewal_for(&self, app: &str, by: &Claimer) -> Result<(), StoreError> {
        self.in_transaction(Durability::Claim, async |transaction| {
            cached::execute(
                transaction,
                "UPDATE platform_tokens SET renewing_by = NULL, renewal_until = NULL
                     WHERE app = $1 AND renewing_by = $2",
                &[&app, &by.as_str()],
            )
            .await
            .map_err(database("releasing the platform token's renewal"))?;
            Ok(())
        })
    }

    /// Reservations of one app queue on an advisory lock, so each sees every start reserved
    /// before it.
    pub(super) fn reserve_call_for(
        &self,
        app: &str,
        limit: CallLimit,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        if limit.max == 0 {
            return Ok(now);
        }
        self.in_transaction(Durability::Claim, async |transaction| {
            cached::execute(
                transaction,
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&CALLS_LOCK, &app],
            )
            .await
            .map_err(database("waiting for other reservations of platform calls"))?;
            let reserved: Vec<Millis> = cached::query(
                transaction,
                "SELECT start_at FROM platform_calls WHERE app = $1
                     ORDER BY start_at DESC LIMIT $2",
                &[&app, &i64::from(limit.max)],
            )
            .await
            .map_err(database("reading the reserved platform calls"))?
            .iter()
            .map(|row| Millis(row.get(0)))
            .collect();
            let start = limit.next_start(&reserved, now);
            cached::execute(
                transaction,
                "INSERT INTO platform_calls (app, start_at) VALUES ($1, $2)",
                &[&app, &start.0],
            )
            .await
            .map_err(database("reserving a platform call"))?;
            cached::execute(
                transaction,
                "DELETE FROM platform_calls WHERE app = $1 AND start_at < $2",
                &[&app, &limit.forget_before(now).0],
            )
            .await
            .map_err(database("forgetting old platform calls"))?;
            Ok(start)
        })
    }
}
