//! Where the locator keeps who is connected where.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use mesh_api::locator::v1::TerminalLocation;
use mesh_contract::TenantId;
use prost::Message;

/// Why the registry could not be read or written (its store is unreachable, say): the call
/// is answered UNAVAILABLE, worth a retry.
#[derive(Debug, thiserror::Error)]
#[error("presence registry: {0}")]
pub struct PresenceError(String);

/// The registry of connected terminals, per tenant and user.
#[tonic::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records where a terminal is connected, replacing where it was; how many entries the
    /// user has then (an upper bound of their attached terminals: entries of nodes that died
    /// count until a lookup removes them), read in the same round trip.
    async fn register(
        &self,
        tenant: &TenantId,
        location: TerminalLocation,
    ) -> Result<usize, PresenceError>;

    /// Forgets a terminal, if node `node_id` is still the one it is connected to.
    async fn unregister(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
        node_id: &str,
    ) -> Result<(), PresenceError>;

    /// Every terminal of a user connected now, ordered by terminal id.
    async fn locate(
        &self,
        tenant: &TenantId,
        user: &str,
    ) -> Result<Vec<TerminalLocation>, PresenceError>;
}

/// Terminals of one user, by terminal id.
type UserTerminals = BTreeMap<String, TerminalLocation>;

/// The registry in this process's memory: one node.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    tenants: RwLock<HashMap<TenantId, HashMap<String, UserTerminals>>>,
}

#[tonic::async_trait]
impl Presence for MemoryPresence {
    async fn register(
        &self,
        tenant: &TenantId,
        location: TerminalLocation,
    ) -> Result<usize, PresenceError> {
        let mut tenants = self.tenants.write().expect("lock");
        let terminals = tenants
            .entry(tenant.clone())
            .or_default()
            .entry(location.user_id.clone())
            .or_default();
        terminals.insert(location.terminal_id.clone(), location);
        Ok(terminals.len())
    }

    async fn unregister(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
        node_id: &str,
    ) -> Result<(), PresenceError> {
        let mut tenants = self.tenants.write().expect("lock");
        if let Some(users) = tenants.get_mut(tenant)
            && let Some(terminals) = users.get_mut(user)
        {
            if terminals
                .get(terminal)
                .is_some_and(|l| l.node_id == node_id)
            {
                terminals.remove(terminal);
            }
            // a user with no terminal left takes no memory
            if terminals.is_empty() {
                users.remove(user);
                // nor does the room a crowd of users left behind
                let (len, capacity) = (users.len(), users.capacity());
                if capacity > 1024 && len < capacity / 4 {
                    users.shrink_to(len * 2);
                }
            }
        }
        Ok(())
    }

    async fn locate(
        &self,
        tenant: &TenantId,
        user: &str,
    ) -> Result<Vec<TerminalLocation>, PresenceError> {
        Ok(self
            .tenants
            .read()
            .expect("lock")
            .get(tenant)
            .and_then(|users| users.get(user))
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default())
    }
}

/// Removes a terminal's entry only if the node holding it is the one asking (`<node>|...`).
const UNREGISTER: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '|' then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

/// The registry in Redis, shared by every node of a mesh: a hash per tenant and user
/// (`<prefix>:loc:<tenant>:<user>`, terminal id to `<node id>|<location>`), and a key per
/// live node (`<prefix>:node:<node id>`) that expires unless the node renews it
/// ([`RedisPresence::keep_alive`]). A terminal on a node whose key expired is not located, and
/// its entry is removed by the next lookup.
///
/// Redis is inside the mesh's trust boundary, but one write into it must not redirect
/// messages: a node's key holds its address signed with the node credential
/// (`<address>|<HMAC-SHA256(node credential, "<node id>|<address>")>`, see
/// [`RedisPresence::with_node_credential`]), and a location is located only when it names a
/// live node whose signed address is the location's. A location naming an unknown node, a
/// node whose key is not signed with this mesh's credential, or another address than the
/// node's is ignored and logged: nothing is pushed there.
///
/// A node that was only silent (paused, cut off from Redis for longer than its heartbeat's
/// expiry, or Redis restarted empty) finds its key gone at its next heartbeat and registers
/// again every terminal it still holds, unless the terminal meanwhile registered elsewhere:
/// its terminals are reachable again, not forgotten for good.
#[derive(Clone)]
pub struct RedisPresence {
    connection: redis::aio::ConnectionManager,
    /// The mesh's keys' prefix: several meshes share a Redis apart.
    prefix: String,
    /// What this process registered and holds: (user key, terminal) to the entry's value.
    held: Arc<Mutex<Held>>,
    /// Told each time this node's terminals were registered again after it was taken for
    /// dead: pushes to them were skipped meanwhile ([`RedisPresence::reregistered`]).
    reregistered: Arc<tokio::sync::Notify>,
    /// What signs and checks the nodes' addresses: the node credential.
    node_credential: Arc<Vec<u8>>,
}

/// The signature of node `node_id`'s address with the node credential, in hex.
fn sign(credential: &[u8], node_id: &str, address: &str) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(credential).expect("HMAC takes any key length");
    mac.update(node_id.as_bytes());
    mac.update(b"|");
    mac.update(address.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a node key's value (`<address>|<signature>`) is signed with `credential` for
/// `node_id`; its address if so.
fn verified<'a>(credential: &[u8], node_id: &str, value: &'a str) -> Option<&'a str> {
    use hmac::Mac;
    let (address, signature) = value.rsplit_once('|')?;
    let signature: Vec<u8> = (0..signature.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(signature.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(credential).expect("HMAC takes any key length");
    mac.update(node_id.as_bytes());
    mac.update(b"|");
    mac.update(address.as_bytes());
    // constant time: the signature is a secret's work
    mac.verify_slice(&signature).ok().map(|()| address)
}

/// Entries this process registered: (user key, terminal id) to the entry's value.
type Held = HashMap<(String, String), Vec<u8>>;

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence").finish_non_exhaustive()
    }
}

fn redis_error(what: &str) -> impl Fn(redis::RedisError) -> PresenceError + '_ {
    move |e| PresenceError(format!("{what}: {e}"))
}

impl RedisPresence {
    fn user_key(&self, tenant: &TenantId, user: &str) -> String {
        format!("{}:loc:{tenant}:{user}", self.prefix)
    }

    fn node_key(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}", self.prefix)
    }
}

impl RedisPresence {
    /// Connects to Redis at `url` (`redis://127.0.0.1:6379`), for the mesh whose keys start
    /// with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, PresenceError> {
        let client = redis::Client::open(url).map_err(redis_error(url))?;
        let connection = client
            .get_connection_manager()
            .await
            .map_err(redis_error(url))?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            held: Arc::default(),
            reregistered: Arc::default(),
            node_credential: Arc::new(Vec::new()),
        })
    }

    /// Signs this node's address, and checks the other nodes', with the node credential every
    /// node of the mesh shares (and no tenant holds).
    pub fn with_node_credential(mut self, credential: &str) -> Self {
        self.node_credential = Arc::new(credential.as_bytes().to_vec());
        self
    }

    /// Says node `node_id`, reached at `address`, is alive for `ttl`, now and every third of
    /// it, until the returned task is aborted (or the process ends): when it stops, the node's
    /// terminals are forgotten within `ttl`. A heartbeat that finds the node's key gone (the
    /// node was silent longer than `ttl`) registers again the terminals this process holds.
    pub fn keep_alive(
        &self,
        node_id: &str,
        address: &str,
        ttl: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let presence = self.clone();
        let key = self.node_key(node_id);
        let value = format!(
            "{address}|{}",
            sign(&self.node_credential, node_id, address)
        );
        let seconds = ttl.as_secs().max(1);
        tokio::spawn(async move {
            let mut connection = presence.connection.clone();
            let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
            let mut first = true;
            loop {
                tick.tick().await;
                // the value it replaced: none means the key had expired (or Redis lost it)
                let said = redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("EX")
                    .arg(seconds)
                    .arg("GET")
                    .query_async::<Option<String>>(&mut connection)
                    .await;
                match said {
                    Ok(None) if !first => {
                        let again = presence.register_held().await;
                        presence.reregistered.notify_one();
                        tracing::warn!(node = %key, terminals = again, "this node was taken for dead (silent past its heartbeat's expiry); its terminals are registered again");
                    }
                    Ok(_) => first = false,
                    Err(err) => {
                        tracing::warn!(node = %key, error = %err, "presence heartbeat failed")
                    }
                }
            }
        })
    }

    /// Notified each time the heartbeat found this node taken for dead (paused, cut off from
    /// Redis, Redis restarted empty) and registered its terminals again: pushes to them were
    /// skipped meanwhile, so the gateway tells them to sync
    /// (`GatewayService::beat_now`).
    pub fn reregistered(&self) -> Arc<tokio::sync::Notify> {
        self.reregistered.clone()
    }

    /// Removes a terminal's entry in Redis if `node_id` holds it.
    async fn forget(&self, key: &str, terminal: &str, node_id: &str) -> Result<(), PresenceError> {
        redis::cmd("EVAL")
            .arg(UNREGISTER)
            .arg(1)
            .arg(key)
            .arg(terminal)
            .arg(node_id)
            .query_async::<i64>(&mut self.connection.clone())
            .await
            .map(drop)
            .map_err(redis_error("unregistering a terminal"))
    }

    /// Registers again each terminal this process holds whose entry is gone (none that
    /// registered elsewhere meanwhile); how many.
    async fn register_held(&self) -> usize {
        let held: Vec<((String, String), Vec<u8>)> = self
            .held
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut connection = self.connection.clone();
        let mut again = 0;
        for ((user_key, terminal), value) in held {
            let set = redis::cmd("HSETNX")
                .arg(&user_key)
                .arg(&terminal)
                .arg(value)
                .query_async::<i64>(&mut connection)
                .await;
            match set {
                Ok(1) => again += 1,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "registering a terminal again failed");
                }
            }
        }
        again
    }
}

#[tonic::async_trait]
impl Presence for RedisPresence {
    async fn register(
        &self,
        tenant: &TenantId,
        location: TerminalLocation,
    ) -> Result<usize, PresenceError> {
        let mut value = format!("{}|", location.node_id).into_bytes();
        location.encode(&mut value).expect("a Vec grows as needed");
        let key = self.user_key(tenant, &location.user_id);
        // the count in the same round trip: a device cap reads the user's terminals only
        // when it may be reached
        let (entries,): (usize,) = redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(&location.terminal_id)
            .arg(&value)
            .ignore()
            .cmd("HLEN")
            .arg(&key)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(redis_error("registering a terminal"))?;
        self.held
            .lock()
            .expect("lock")
            .insert((key, location.terminal_id), value);
        Ok(entries)
    }

    async fn unregister(
        &self,
        tenant: &TenantId,
        user: &str,
        terminal: &str,
        node_id: &str,
    ) -> Result<(), PresenceError> {
        let key = self.user_key(tenant, user);
        {
            // held here no more, if it was held by `node_id` (this process's)
            let mut held = self.held.lock().expect("lock");
            let entry = (key.clone(), terminal.to_owned());
            if held
                .get(&entry)
                .is_some_and(|v| v.starts_with(format!("{node_id}|").as_bytes()))
            {
                held.remove(&entry);
            }
        }
        self.forget(&key, terminal, node_id).await
    }

    async fn locate(
        &self,
        tenant: &TenantId,
        user: &str,
    ) -> Result<Vec<TerminalLocation>, PresenceError> {
        let mut connection = self.connection.clone();
        let key = self.user_key(tenant, user);
        let entries: BTreeMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(redis_error("locating a user"))?;
        let mut found = Vec::with_capacity(entries.len());
        for (terminal, value) in entries {
            let split = value.iter().position(|b| *b == b'|');
            let decoded = split.and_then(|at| TerminalLocation::decode(&value[at + 1..]).ok());
            match decoded {
                Some(location) => found.push((terminal, location)),
                None => tracing::warn!(%tenant, %terminal, "unreadable presence entry skipped"),
            }
        }
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let nodes: Vec<String> = found
            .iter()
            .map(|(_, l)| l.node_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let alive: Vec<Option<String>> = redis::cmd("MGET")
            .arg(nodes.iter().map(|n| self.node_key(n)).collect::<Vec<_>>())
            .query_async(&mut connection)
            .await
            .map_err(redis_error("checking which nodes are alive"))?;
        // each live node's address, as it signed it
        let alive: HashMap<&str, Option<String>> = nodes
            .iter()
            .zip(alive)
            .filter_map(|(n, value)| {
                let value = value?;
                let address = verified(&self.node_credential, n, &value).map(str::to_owned);
                Some((n.as_str(), address))
            })
            .collect();
        let mut located = Vec::with_capacity(found.len());
        for (terminal, location) in found {
            match alive.get(location.node_id.as_str()) {
                Some(Some(address)) if *address == location.node_address => located.push(location),
                Some(signed) => {
                    // a node key not signed with this mesh's credential, or a location naming
                    // another address than its node's: a write into Redis trying to send this
                    // user's messages elsewhere. Nothing is pushed there.
                    tracing::warn!(%tenant, user, %terminal, node = %location.node_id, address = %location.node_address, node_signed = signed.is_some(), "a location the node did not sign is ignored");
                }
                None => {
                    // its node is gone: so is the terminal's connection (unless the node was only
                    // silent: then its next heartbeat registers the terminal again)
                    let _ = self.forget(&key, &terminal, &location.node_id).await;
                }
            }
        }
        Ok(located)
    }
}
