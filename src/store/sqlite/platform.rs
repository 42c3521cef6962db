//! The shared platform state (see [`crate::store::PlatformToken`]): one row per app holding
//! its token and its renewal lock, and the reserved call starts. None of it needs to survive
//! a crash (a lost token costs a login; a lost start is older than a window a moment later),
//! so it is written like a claim, without waiting for the disk.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, database, execute_cached, query_row_cached};
use crate::model::Millis;
use crate::store::{CallLimit, Claimer, PlatformToken, StoreError};

impl SqliteStore {
    pub(super) fn read_platform_token(
        &self,
        app: &str,
    ) -> Result<Option<PlatformToken>, StoreError> {
        let reader = self.reader();
        query_row_cached(
            &reader,
            "SELECT access, refresh, renew_at, expires_in FROM platform_tokens
             WHERE app = ?1 AND access IS NOT NULL",
            [app],
            |row| {
                Ok(PlatformToken {
                    access: row.get(0)?,
                    refresh: row.get(1)?,
                    renew_at: Millis(row.get(2)?),
                    expires_in: row.get::<_, i64>(3)?.max(0) as u64,
                })
            },
        )
        .optional()
        .map_err(database("reading the platform token"))
    }

    pub(super) fn claim_renewal_for(
        &self,
        app: &str,
        by: &Claimer,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        self.claim_write(|transaction| {
            execute_cached(
                transaction,
                "INSERT INTO platform_tokens (app, renewing_by, renewal_until) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app) DO UPDATE SET renewing_by = excluded.renewing_by,
                 renewal_until = excluded.renewal_until
                 WHERE renewing_by IS NULL OR renewing_by = ?2 OR renewal_until <= ?4",
                params![app, by.as_str(), until.0, now.0],
            )
            .map(|changed| changed == 1)
            .map_err(database("claiming the platform token's renewal"))
        })
    }

    pub(super) fn store_token_for(
        &self,
        app: &str,
        by: &Claimer,
        token: &PlatformToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.claim_write(|transaction| {
            execute_cached(
                transaction,
                "INSERT INTO platform_tokens (app, access, refresh, renew_at, expires_in)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (app) DO UPDATE SET access = excluded.access,
                 refresh = excluded.refresh, renew_at = excluded.renew_at,
                 expires_in = excluded.expires_in, renewing_by = NULL, renewal_until = NULL
                 WHERE renewing_by IS NULL OR renewing_by = ?6 OR renewal_until <= ?7",
                params![
                    app,
                    token.access,
                    token.refresh,
                    token.renew_at.0,
                    i64::try_from(token.expires_in).unwrap_or(i64::MAX),
                    by.as_str(),
                    now.0
                ],
            )
            .map(|changed| changed == 1)
            .map_err(database("storing the platform token"))
        })
    }

    pub(super) fn release_renewal_for(&self, app: &str, by: &Claimer) -> Result<(), StoreError> {
        self.claim_write(|transaction| {
            execute_cached(
                transaction,
                "UPDATE platform_tokens SET renewing_by = NULL, renewal_until = NULL
                 WHERE app = ?1 AND renewing_by = ?2",
                params![app, by.as_str()],
            )
            .map(drop)
            .map_err(database("releasing the platform token's renewal"))
        })
    }

    pub(super) fn reserve_call_for(
        &self,
        app: &str,
        limit: CallLimit,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        if limit.max == 0 {
            return Ok(now);
        }
        self.claim_write(|transaction| {
            let reserved: Vec<Millis> = transaction
                .prepare_cached(
                    "SELECT start_at FROM platform_calls WHERE app = ?1
                     ORDER BY start_at DESC LIMIT ?2",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(params![app, limit.max], |row| row.get(0).map(Millis))?
                        .collect()
                })
                .map_err(database("reading the reserved platform calls"))?;
            let start = limit.next_start(&reserved, now);
            execute_cached(
                transaction,
                "INSERT INTO platform_calls (app, start_at) VALUES (?1, ?2)",
                params![app, start.0],
            )
            .map_err(database("reserving a platform call"))?;
            execute_cached(
                transaction,
                "DELETE FROM platform_calls WHERE app = ?1 AND start_at < ?2",
                params![app, limit.forget_before(now).0],
            )
            .map_err(database("forgetting old platform calls"))?;
            Ok(start)
        })
    }
}
