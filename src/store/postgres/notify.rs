//! Wake-ups between instances: a commit that leaves work for others (new events, actions due
//! now) sends an empty `NOTIFY`, and each serving instance `LISTEN`s on a connection of its
//! own and wakes its script workers or its delivery. Polling stays the fallback: a listener
//! that lost its connection (a restart of the database, a PgBouncer in transaction mode) only
//! makes others wait for their next poll, at most a second, while it reconnects.

use std::time::Duration;

use futures_util::{StreamExt, stream};
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{PgStore, Tx, connect_error_reason, database};
use crate::store::{Signals, StoreError};

/// New pending events.
pub(super) const EVENTS: &str = "notirouter_events";
/// New or newly due actions.
pub(super) const ACTIONS: &str = "notirouter_actions";

/// How long a listener waits before connecting again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Tells the listening instances, once `transaction` commits, that there is work on `channel`
/// (notifications of one transaction on one channel are delivered once).
pub(super) async fn notify(transaction: &Tx, channel: &str) -> Result<(), StoreError> {
    transaction
        .execute("SELECT pg_notify($1, '')", &[&channel])
        .await
        .map_err(database("notifying other instances"))?;
    Ok(())
}

impl PgStore {
    /// Starts the listener on the store's runtime; it runs until the store is dropped.
    pub(super) fn listen(&self, signals: Signals) {
        let config = self.connect_config.clone();
        let connector = self.connector.clone();
        let target = self.target.clone();
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives until the store drops");
        runtime.spawn(async move {
            loop {
                if let Err(error) = listen_once(&config, connector.clone(), &signals).await {
                    tracing::warn!(database = %target, %error, "lost the connection that listens for other instances' work; polling meanwhile");
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        });
    }
}

/// Listens on one connection until it fails. The connection is driven by a task of its own
/// (it must be polled for the `LISTEN` to complete), which hands each notification's channel
/// over.
async fn listen_once(
    config: &tokio_postgres::Config,
    connector: MakeRustlsConnect,
    signals: &Signals,
) -> Result<(), ListenError> {
    let (client, mut connection) = config.connect(connector).await?;
    let (sender, mut channels) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |context| connection.poll_message(context));
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(note) = message?
                && sender.send(note.channel().to_owned()).is_err()
            {
                break;
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    client
        .batch_execute(&format!("LISTEN {EVENTS}; LISTEN {ACTIONS}"))
        .await?;
    while let Some(channel) = channels.recv().await {
        match channel.as_str() {
            EVENTS => signals.events.notify(),
            ACTIONS => signals.actions.notify_one(),
            _ => {}
        }
    }
    drop(client);
    driver.await.map_err(|_| ListenError::Ended)??;
    Err(ListenError::Ended)
}

#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("{}", connect_error_reason(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("the connection ended")]
    Ended,
}
