//! Cross-node events for GraphQL subscriptions. Publishing goes through Redis pub/sub
//! when configured, so a subscriber on any node sees events found on any other; without
//! Redis (embedded mode) it is an in-process broadcast.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::broadcast;

/// How many undelivered events a slow subscriber may fall behind before it skips some.
const BUFFER: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    topic: String,
    payload: serde_json::Value,
}

#[derive(Clone)]
pub struct EventBus {
    local: broadcast::Sender<Envelope>,
    redis: Option<(redis::aio::ConnectionManager, String)>,
}

impl EventBus {
    /// An in-process bus (embedded mode).
    pub fn local() -> Self {
        Self { local: broadcast::channel(BUFFER).0, redis: None }
    }

    /// A bus fanned out through Redis channel `<prefix>:events`. A background task
    /// relays Redis messages to local subscribers and resubscribes after connection loss.
    pub fn redis(client: redis::Client, manager: redis::aio::ConnectionManager, prefix: &str) -> Self {
        let channel = format!("{prefix}:events");
        let bus = Self { local: broadcast::channel(BUFFER).0, redis: Some((manager, channel.clone())) };
        let local = bus.local.clone();
        tokio::spawn(async move {
            loop {
                match relay(&client, &channel, &local).await {
                    Ok(()) => tracing::warn!("redis event subscription ended; resubscribing"),
                    Err(error) => tracing::warn!(error = %error, "redis event subscription failed; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        bus
    }

    /// Publishes to every subscriber of `topic` on every node. When Redis is down the
    /// event still reaches this node's subscribers.
    pub async fn publish(&self, topic: &str, payload: &impl Serialize) {
        let envelope =
            Envelope { topic: topic.to_string(), payload: serde_json::to_value(payload).unwrap_or_default() };
        if let Some((manager, channel)) = &self.redis {
            let message = serde_json::to_string(&envelope).unwrap_or_default();
            let mut manager = manager.clone();
            match redis::cmd("PUBLISH").arg(channel).arg(message).query_async::<i64>(&mut manager).await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(error = %error, topic, "publishing through redis failed; delivering locally only")
                }
            }
        }
        let _ = self.local.send(envelope);
    }

    /// Events of `topic` from now on, decoded as `T` (undecodable ones are skipped).
    pub fn subscribe<T: DeserializeOwned + Send + 'static>(
        &self,
        topic: &str,
    ) -> impl Stream<Item = T> + Send + 'static + use<T> {
        let topic = topic.to_string();
        tokio_stream_from(self.local.subscribe()).filter_map(move |envelope| {
            let decoded = (envelope.topic == topic).then(|| serde_json::from_value(envelope.payload).ok()).flatten();
            async move { decoded }
        })
    }
}

async fn relay(client: &redis::Client, channel: &str, local: &broadcast::Sender<Envelope>) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let Ok(text) = message.get_payload::<String>() else { continue };
        if let Ok(envelope) = serde_json::from_str::<Envelope>(&text) {
            let _ = local.send(envelope);
        }
    }
    Ok(())
}

/// A broadcast receiver as a stream; a subscriber that lags skips what it missed.
fn tokio_stream_from<T: Clone + Send + 'static>(
    mut receiver: broadcast::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    async_stream::stream! {
        loop {
            match receiver.recv().await {
                Ok(item) => yield item,
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "subscriber fell behind; events skipped");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}
