//! A map the nodes of one mesh share in Redis, one versioned entry per key: what the switch
//! state ([`super::shared_switches`]) and the tenant registry ([`super::shared`]) are kept in.
//!
//! Two writers changing different keys at the same moment must both win, a node that was away
//! must catch up, and a store that restarted empty must be refilled, not read as "nothing".
//! So, under a key prefix `<p>`:
//!
//! - **One entry per key**, never the whole map: `<p>:entries` is a hash from an entry's key
//!   to `<revision>|<value>`; a write never touches another entry. A removal is an entry too
//!   (a tombstone), so a node that was away learns of it.
//! - **A revision per write**: `<p>:revision` counts every write; a write takes the next one in
//!   the same Lua script that stores the entry and announces it (`PUBLISH <p>:changed`), so one
//!   number tells a node whether it is behind ([`Versioned::head`]).
//! - **An epoch**: `<p>:epoch`, a random id set by whoever fills an empty store. A node that
//!   finds it missing (Redis restarted empty) or changed fills the store again with what it
//!   knew ([`Versioned::seed`], entries missing only).
//! - **Sealed values**, when they may hold secrets ([`Versioned::sealed`]): ChaCha20-Poly1305
//!   under a key derived from the node credential; whoever reads Redis reads nothing, and a
//!   value written without the credential does not open and is ignored (logged).

use std::{collections::BTreeMap, marker::PhantomData, sync::Arc, time::Duration};

use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};

use super::shared::SharedError;

/// How often a node compares its state with the store's, announcements or not: a node whose
/// subscription was lost, or a store that came back, is reconciled within this.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// The store's state: its epoch, its revision, every entry with the revision that wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot<V> {
    /// Who filled the store last (`None`: an empty store).
    pub epoch: Option<String>,
    /// The last revision written.
    pub revision: u64,
    /// Key to (revision, value).
    pub entries: BTreeMap<String, (u64, V)>,
}

impl<V> Default for Snapshot<V> {
    fn default() -> Self {
        Self {
            epoch: None,
            revision: 0,
            entries: BTreeMap::new(),
        }
    }
}

/// Writes one entry with the next revision and announces it; `-1` when the store has no
/// epoch (it restarted empty: it is filled again first).
const WRITE: &str = r"
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
local rev = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], rev .. '|' .. ARGV[2])
redis.call('PUBLISH', KEYS[4], rev)
return rev
";

/// Fills the store with the entries it lacks (each with a revision of its own), setting the
/// epoch if there is none; the epoch after.
const SEED: &str = r"
local epoch = redis.call('GET', KEYS[3])
local wrote = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[3], epoch)
  -- a new epoch is news too: whoever waits for a filled store looks now
  wrote = 1
end
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    local rev = redis.call('INCR', KEYS[2])
    redis.call('HSET', KEYS[1], ARGV[i], rev .. '|' .. ARGV[i + 1])
    wrote = wrote + 1
  end
end
if wrote > 0 then redis.call('PUBLISH', KEYS[4], redis.call('GET', KEYS[2]) or '0') end
return epoch
";

/// What seals a value: ChaCha20-Poly1305 under a key derived from the node credential.
struct Seal(ring::aead::LessSafeKey);

/// What a sealed value starts with.
const SEALED: &[u8] = b"sealed1:";

impl Seal {
    fn new(purpose: &str, node_credential: &str) -> Self {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"mesh shared state v1\0");
        context.update(purpose.as_bytes());
        context.update(b"\0");
        context.update(node_credential.as_bytes());
        let key =
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, context.finish().as_ref())
                .expect("a SHA-256 digest is a ChaCha20 key");
        Self(ring::aead::LessSafeKey::new(key))
    }

    /// `SEALED`, a random nonce, then the sealed bytes.
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source");
        let mut sealed = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut sealed,
            )
            .expect("sealing in memory");
        [SEALED, &nonce, &sealed].concat()
    }

    /// The bytes [`Seal::seal`] sealed, if this key sealed them.
    fn open(&self, value: &[u8]) -> Option<Vec<u8>> {
        let rest = value.strip_prefix(SEALED)?;
        if rest.len() < ring::aead::NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// A versioned map in Redis under one key prefix. Cheap to clone.
pub struct Versioned<V> {
    url: String,
    prefix: String,
    client: redis::Client,
    connection: redis::aio::ConnectionManager,
    seal: Option<Arc<Seal>>,
    value: PhantomData<fn() -> V>,
}

impl<V> Clone for Versioned<V> {
    fn clone(&self) -> Self {
        Self {
            url: self.url.clone(),
            prefix: self.prefix.clone(),
            client: self.client.clone(),
            connection: self.connection.clone(),
            seal: self.seal.clone(),
            value: PhantomData,
        }
    }
}

impl<V> std::fmt::Debug for Versioned<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versioned")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("sealed", &self.seal.is_some())
            .finish_non_exhaustive()
    }
}

impl<V: Serialize + DeserializeOwned> Versioned<V> {
    /// The map under `prefix` at the Redis at `url` (`redis://`, or `rediss://` for TLS; a
    /// user and password in the URL for an ACL user).
    pub async fn connect(url: &str, prefix: String) -> Result<Self, SharedError> {
        let error = |e: redis::RedisError| SharedError::new(url, e);
        let client = redis::Client::open(url).map_err(error)?;
        // a store that went away answers within a second, so a change is never held up for
        // long: it is applied here and shared when the store is back
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(error)?;
        Ok(Self {
            url: url.to_owned(),
            prefix,
            client,
            connection,
            seal: None,
            value: PhantomData,
        })
    }

    /// Values sealed with a key derived from `node_credential` (for `purpose`): for values
    /// that may hold secrets.
    pub fn sealed(mut self, purpose: &str, node_credential: &str) -> Self {
        self.seal = Some(Arc::new(Seal::new(purpose, node_credential)));
        self
    }

    /// `plain` sealed with this map's key (as is, when it has none): for what a user of the
    /// map keeps beside it.
    pub(crate) fn seal_bytes(&self, plain: &[u8]) -> Vec<u8> {
        match &self.seal {
            Some(seal) => seal.seal(plain),
            None => plain.to_vec(),
        }
    }

    /// What [`Versioned::seal_bytes`] sealed, if it was sealed with this map's key.
    pub(crate) fn open_bytes(&self, value: &[u8]) -> Option<Vec<u8>> {
        match &self.seal {
            Some(seal) => seal.open(value),
            None => Some(value.to_vec()),
        }
    }

    pub(crate) fn error(&self, e: impl std::fmt::Display) -> SharedError {
        SharedError::new(&self.url, e)
    }

    /// `<prefix>:<name>`: a key of this map's.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// A connection to the store, for what a user of the map keeps beside it.
    pub(crate) fn connection(&self) -> redis::aio::ConnectionManager {
        self.connection.clone()
    }

    /// The store's epoch and revision: what a node compares with its own to know whether it
    /// is behind, in one round trip.
    pub async fn head(&self) -> Result<(Option<String>, u64), SharedError> {
        let (epoch, revision): (Option<String>, Option<u64>) = redis::cmd("MGET")
            .arg(self.key("epoch"))
            .arg(self.key("revision"))
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.error(e))?;
        Ok((epoch, revision.unwrap_or(0)))
    }

    /// Everything the store holds, read at one moment. An entry that does not read (or, sealed,
    /// does not open with this mesh's key) is left out and logged.
    pub async fn snapshot(&self) -> Result<Snapshot<V>, SharedError> {
        type Raw = (Option<String>, Option<u64>, BTreeMap<String, Vec<u8>>);
        let (epoch, revision, raw): Raw = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(self.key("epoch"))
            .cmd("GET")
            .arg(self.key("revision"))
            .cmd("HGETALL")
            .arg(self.key("entries"))
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.error(e))?;
        let mut entries = BTreeMap::new();
        for (key, value) in raw {
            match self.decode(&value) {
                Some(entry) => {
                    entries.insert(key, entry);
                }
                None => {
                    tracing::warn!(prefix = %self.prefix, entry = %key, "a shared entry that does not read (or was not sealed by this mesh) is ignored")
                }
            }
        }
        Ok(Snapshot {
            epoch,
            revision: revision.unwrap_or(0),
            entries,
        })
    }

    fn decode(&self, value: &[u8]) -> Option<(u64, V)> {
        let split = value.iter().position(|b| *b == b'|')?;
        let revision = std::str::from_utf8(&value[..split]).ok()?.parse().ok()?;
        let payload = &value[split + 1..];
        let plain = match &self.seal {
            Some(seal) => seal.open(payload)?,
            None => payload.to_vec(),
        };
        Some((revision, serde_json::from_slice(&plain).ok()?))
    }

    fn encode(&self, value: &V) -> Result<Vec<u8>, SharedError> {
        let plain = serde_json::to_vec(value).map_err(|e| self.error(e))?;
        Ok(match &self.seal {
            Some(seal) => seal.seal(&plain),
            None => plain,
        })
    }

    /// Writes one entry with the next revision and announces it; `None` when the store has no
    /// epoch (it restarted empty): [`Versioned::seed`] it first.
    pub async fn write(&self, key: &str, value: &V) -> Result<Option<u64>, SharedError> {
        let revision: i64 = redis::Script::new(WRITE)
            .key(self.key("entries"))
            .key(self.key("revision"))
            .key(self.key("epoch"))
            .key(self.key("changed"))
            .arg(key)
            .arg(self.encode(value)?)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.error(e))?;
        Ok(u64::try_from(revision).ok())
    }

    /// Fills the store with the entries it lacks (one that has an entry keeps its own), and
    /// gives it an epoch if it has none. The store's epoch after.
    pub async fn seed(&self, entries: &[(String, V)]) -> Result<String, SharedError> {
        let seed = redis::Script::new(SEED);
        let mut script = seed.prepare_invoke();
        script
            .key(self.key("entries"))
            .key(self.key("revision"))
            .key(self.key("epoch"))
            .key(self.key("changed"))
            .arg(mesh_contract::ServiceCredentials::fresh_token());
        for (key, value) in entries {
            script.arg(key).arg(self.encode(value)?);
        }
        script
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.error(e))
    }

    /// Calls `announced` each time a write is announced, for ever (a lost subscription is
    /// made again; what was missed meanwhile the periodic reconciliation finds).
    pub async fn on_announcement(self, announced: impl Fn() + Send + 'static) {
        let mut backoff =
            mesh_contract::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(self.key("changed")).await {
                    Ok(()) => {
                        backoff.reset();
                        announced();
                        let mut messages = pubsub.on_message();
                        while messages.next().await.is_some() {
                            announced();
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "subscribing to shared changes"),
                },
                Err(err) => tracing::warn!(error = %err, "connecting for shared changes"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}
