//! The store contract (tests/store_contract/cases.rs) on every backend: the embedded SQLite
//! store, and PostgreSQL (a database of its own per case; see tests/common/pg.rs).

#[path = "store_contract/cases.rs"]
mod cases;
// This binary creates databases but queries the server about none of them.
#[allow(dead_code)]
#[path = "common/pg.rs"]
mod pg;

use std::path::Path;

use cases::{Backend, LEASE_MS};
use notirouter::config::Config;
use notirouter::store::{self, Opener};

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[store]\npath = \"{}\"\nlease = \"{LEASE_MS}ms\"\n",
        dir.path().join("store.db").display()
    );
    let config = Config::parse(&text, Path::new("test.toml"), Vec::new()).unwrap();
    Backend {
        store: store::open(&config.store, Opener::Server).unwrap(),
        _keep: Box::new(dir),
    }
}

fn postgres() -> Option<Backend> {
    let database = pg::TestDatabase::create()?;
    let text = format!(
        "[store]\nurl = \"{}\"\nlease = \"{LEASE_MS}ms\"\npool_size = 8\n",
        database.url
    );
    let config = Config::parse(&text, Path::new("test.toml"), Vec::new()).unwrap();
    Some(Backend {
        store: store::open(&config.store, Opener::Server).unwrap(),
        _keep: Box::new(database),
    })
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $case() {
                    super::cases::$case(super::sqlite());
                }
            )*
        }

        mod on_postgres {
            $(
                #[test]
                fn $case() {
                    if let Some(backend) = super::postgres() {
                        super::cases::$case(backend);
                    }
                }
            )*
        }
    };
}

contract!(
    two_claimers_racing_on_one_event_run_it_once,
    a_device_waits_behind_its_earlier_event_held_by_another_claimer,
    a_claim_looks_past_the_oldest_events_when_another_claimer_holds_them,
    an_event_whose_claimer_stalls_past_the_lease_goes_to_another,
    an_event_number_is_never_given_twice_even_after_the_newest_were_pruned,
    claimers_share_due_actions_without_overlap,
    an_action_whose_claimer_stalls_past_the_lease_is_sent_by_another,
    a_claim_renewed_by_its_holder_outlasts_the_first_lease,
    a_result_ends_the_claim_and_a_retry_is_claimable_when_due,
    a_batch_whose_state_changed_since_it_was_read_is_refused,
    two_claimers_racing_for_the_token_renewal_get_it_once,
    a_token_renewal_whose_holder_stalls_past_the_lease_goes_to_another,
    a_stored_token_survives_later_claims_and_anyone_stores_while_the_lock_is_free,
    concurrent_call_reservers_never_exceed_the_limit_together,
    a_call_reserved_after_a_quiet_window_goes_now,
    a_digest_fires_once_when_its_window_ends_with_its_items_in_order,
    a_digest_keeps_its_first_items_and_counts_every_one,
    a_refused_batch_adds_nothing_to_a_digest,
    two_firing_at_once_make_one_event_per_digest,
    an_addition_after_a_digest_fired_opens_a_new_one,
    the_campaign_counts_take_every_result_and_retry_once,
);
