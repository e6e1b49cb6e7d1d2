//! Who may call the admin API: each operator's credential, compared in constant time, and a
//! throttle on wrong ones per source address (an IPv6 /64 counts as one), the same through the
//! admin port and the web console.

use std::time::Duration;

use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};

use super::Operator;

/// Refuses every call without an operator's credential, and names the operator of each call
/// it admits ([`Operator`], in the request's extensions).
#[derive(Clone)]
pub struct OpsCredential {
    operators: std::sync::Arc<Vec<(String, Vec<u8>)>>,
    guesses: std::sync::Arc<Guesses>,
}

impl OpsCredential {
    /// Accepts `Bearer <token>` for each `(name, token)` of `operators`.
    pub fn new(operators: &[(String, String)]) -> Self {
        Self {
            operators: std::sync::Arc::new(
                operators
                    .iter()
                    .map(|(name, token)| (name.clone(), token.as_bytes().to_vec()))
                    .collect(),
            ),
            guesses: Default::default(),
        }
    }
}

/// Wrong credentials an address may present within [`GUESS_WINDOW`] before it is refused
/// outright for the rest of it.
pub const GUESSES_ALLOWED: u32 = 10;
/// The window [`GUESSES_ALLOWED`] counts over, and how long an address is then refused.
pub const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (an attacker with many addresses does not grow the table
/// without bound: the oldest windows are forgotten first).
const GUESSERS_KEPT: usize = 10_000;

/// Wrong credentials per source address (an IPv6 /64 counts as one).
#[derive(Default)]
struct Guesses {
    by_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Guessing>>,
    /// Calls refused from blocked addresses since the log last summed them up, and when.
    unsaid: std::sync::atomic::AtomicU64,
    said_at_ms: std::sync::atomic::AtomicU64,
}

struct Guessing {
    since: std::time::Instant,
    wrong: u32,
}

impl Guesses {
    /// Whether `address` is refused outright for now (too many wrong credentials).
    fn blocked(&self, address: std::net::IpAddr) -> Option<Duration> {
        let by_address = self.by_address.lock().expect("lock");
        let guessing = by_address.get(&source(address))?;
        let elapsed = guessing.since.elapsed();
        (guessing.wrong >= GUESSES_ALLOWED && elapsed < GUESS_WINDOW)
            .then(|| GUESS_WINDOW - elapsed)
    }

    /// Counts a wrong credential from `address` and says so in the log at once: each one,
    /// until the address is refused outright (then its refusals are summed up every 10 s: a
    /// blocked address cannot fill the log). A call that names no address (none should) is
    /// counted against the unspecified address, so it is throttled all the same.
    fn wrong(&self, address: Option<std::net::IpAddr>) {
        let address = address.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let mut by_address = self.by_address.lock().expect("lock");
        if by_address.len() >= GUESSERS_KEPT {
            by_address.retain(|_, g| g.since.elapsed() < GUESS_WINDOW);
        }
        if by_address.len() >= GUESSERS_KEPT
            && let Some(oldest) = by_address
                .iter()
                .min_by_key(|(_, g)| g.since)
                .map(|(a, _)| *a)
        {
            by_address.remove(&oldest);
        }
        let guessing = by_address.entry(source(address)).or_insert(Guessing {
            since: std::time::Instant::now(),
            wrong: 0,
        });
        if guessing.since.elapsed() >= GUESS_WINDOW {
            *guessing = Guessing {
                since: std::time::Instant::now(),
                wrong: 0,
            };
        }
        guessing.wrong += 1;
        let wrong = guessing.wrong;
        drop(by_address);
        if wrong < GUESSES_ALLOWED {
            tracing::warn!(%address, wrong, "a wrong ops credential was presented to the admin API");
        } else {
            tracing::warn!(
                %address,
                wrong,
                block_secs = GUESS_WINDOW.as_secs(),
                "wrong ops credentials keep coming from one address: it is refused outright until its window ends"
            );
        }
    }

    /// Counts a call refused because its address is blocked, summed up in the log every 10 s.
    fn refused_while_blocked(&self) {
        self.unsaid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.summed_up();
    }

    /// Says how many calls were refused since it last said so, at most every 10 s.
    fn summed_up(&self) {
        use std::sync::atomic::Ordering;
        let now = mesh_contract::fields::now_ms().max(0) as u64;
        let last = self.said_at_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self
                .said_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = self.unsaid.swap(0, Ordering::Relaxed);
            if refused > 0 {
                tracing::warn!(
                    refused,
                    "calls to the admin API refused from addresses that guessed ops credentials"
                );
            }
        }
    }
}

/// Whom wrong credentials count against: an IPv4 address, or an IPv6 address's /64.
fn source(address: std::net::IpAddr) -> std::net::IpAddr {
    match address {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)).into(),
        },
        v4 => v4,
    }
}

impl Interceptor for OpsCredential {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let address = request.remote_addr().map(|a| a.ip());
        // an address that guessed too often learns nothing more, right or wrong, for a while
        let counted = address.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        if let Some(wait) = self.guesses.blocked(counted) {
            self.guesses.refused_while_blocked();
            return Err(Status::resource_exhausted(format!(
                "too many wrong ops credentials from this address: refused for {} s more",
                wait.as_secs().max(1)
            )));
        }
        let presented = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated("missing ops credential (`authorization: Bearer <token>`)")
            })?
            .to_str()
            .ok()
            // the scheme's name is case-insensitive (RFC 9110)
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                Status::unauthenticated("the ops credential must be `Bearer <token>`")
            })?;
        // every credential compared, in constant time each: how far the search got tells nothing
        let mut who = None;
        for (name, token) in self.operators.iter() {
            if bool::from(presented.as_bytes().ct_eq(token)) {
                who = Some(name.clone());
            }
        }
        match who {
            Some(name) => {
                request.extensions_mut().insert(Operator(name));
                Ok(request)
            }
            None => {
                self.guesses.wrong(address);
                Err(Status::unauthenticated("wrong ops credential"))
            }
        }
    }
}
