//! The switch state of a fleet converges: two `mesh up` nodes sharing a Redis of the test's
//! own. Two operators switching different things through the two nodes at the same moment
//! both win, 20 times over; a Redis restarted empty is refilled from the nodes; a change made
//! through a node while Redis is down is answered at once as "this node only", and reaches
//! the other node (and the store) when Redis is back, merged with a change made through the
//! other node meanwhile. Prints how long the nodes took to agree after Redis came back, the
//! figures SCALE.md records.

use crate::support;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use mesh_api::admin::v1 as api;
use support::{MeshUp, OwnRedis, admin, tenants_folder};

const OPS_TOKEN: &str = "fleet-test-ops-token";

async fn set(at: &str, which: usize, on: bool) -> api::SetSwitchResponse {
    support::set_mall_switch(at, OPS_TOKEN, which, on).await
}

/// Waits until every node lists exactly `expected`; how long it took.
async fn agree(nodes: &[&str], expected: &BTreeSet<String>, what: &str) -> Duration {
    support::switches_agree(nodes, OPS_TOKEN, expected, what).await
}

/// Onboards tenant `id` (shared process group) through the node whose admin API is at `at`.
async fn add_tenant(at: &str, id: &str) -> Result<(), tonic::Status> {
    admin(at, OPS_TOKEN)
        .await
        .add_tenant(api::TenantFile {
            file_name: format!("{id}.toml"),
            content: format!(
                "id = \"{id}\"\ndisplay_name = \"{id}\"\ndata_namespace = \"{id}\"\n\
                 [credentials]\ntoken = \"{id}-secret-token\"\n"
            ),
        })
        .await
        .map(drop)
}

/// Waits until the node whose admin API is at `at` lists tenant `id` as serving.
async fn served(at: &str, id: &str) {
    let started = Instant::now();
    loop {
        let tenants = admin(at, OPS_TOKEN)
            .await
            .list_tenants(api::ListTenantsRequest {})
            .await
            .unwrap()
            .into_inner();
        if tenants
            .tenants
            .iter()
            .any(|t| t.id == id && t.health == "serving")
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{at} serves {id}: {tenants:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Entries in the store that say a switch is off.
async fn stored_off(redis: &OwnRedis) -> usize {
    let entries: Vec<String> = redis::cmd("HVALS")
        .arg("fleet:control:switch:entries")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    entries
        .iter()
        .filter(|e| e.contains(r#""on":false"#))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_changes_through_two_nodes_all_survive_restarts_and_outages_of_the_store() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let mut redis = OwnRedis::start().await;
    let (dir_a, dir_b) = (
        tenants_folder(&["mall"], &[]),
        tenants_folder(&["mall"], &[]),
    );
    let url = redis.url();
    let env = [
        ("MESH_STATE_REDIS_URL", url.as_str()),
        ("MESH_STATE_REDIS_PREFIX", "fleet"),
        ("MESH_ADMIN_TOKEN", OPS_TOKEN),
    ];
    let mut a = MeshUp::start(dir_a.path(), &env).await;
    let mut b = MeshUp::start(dir_b.path(), &env).await;
    let (at_a, at_b) = (a.admin_address().await, b.admin_address().await);
    a.shared_worker().await;
    b.shared_worker().await;
    let nodes = [at_a.as_str(), at_b.as_str()];
    let scopes = ["recommend@mall".to_owned(), "tier>=2@mall".to_owned()];

    // two operators, two nodes, two different switches, the same moment: both changes
    // survive, every time, and both nodes agree
    let mut worst = Duration::ZERO;
    for trial in 0..20 {
        let on = trial % 2 == 1;
        let (first, second) = tokio::join!(set(&at_a, 0, on), set(&at_b, 1, on));
        for answer in [&first, &second] {
            let fleet = answer.fleet.as_ref().expect("nodes share the switch state");
            assert!(fleet.shared, "trial {trial}: {answer:?}");
            assert_eq!(fleet.nodes_total, 2, "trial {trial}: {fleet:?}");
        }
        let expected: BTreeSet<String> = if on {
            BTreeSet::new()
        } else {
            scopes.iter().cloned().collect()
        };
        worst = worst.max(agree(&nodes, &expected, &format!("trial {trial}")).await);
    }
    println!(
        "FIGURE 20 concurrent switch pairs through two nodes: none lost; agreed within {worst:?} at worst"
    );

    // two business lines onboarded through the two nodes at the same moment: both are
    // served by both nodes (each tenant its own entry in the registry)
    let (first, second) = tokio::join!(add_tenant(&at_a, "alpha"), add_tenant(&at_b, "beta"));
    first.unwrap();
    second.unwrap();
    for id in ["alpha", "beta"] {
        for at in [&at_a, &at_b] {
            served(at, id).await;
        }
    }

    // the store restarts empty: the nodes keep their state and fill it again
    set(&at_a, 0, false).await;
    let both_off: BTreeSet<String> = [scopes[0].clone()].into();
    agree(&nodes, &both_off, "before the restart").await;
    redis.kill();
    redis.up().await;
    let back = Instant::now();
    while stored_off(&redis).await != 1 {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the store is filled again from the nodes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refilled = back.elapsed();
    agree(&nodes, &both_off, "after the store restarted empty").await;
    // and it works as before: a change through b reaches a
    set(&at_b, 1, false).await;
    let expected: BTreeSet<String> = scopes.iter().cloned().collect();
    agree(&nodes, &expected, "a change after the restart").await;

    // the store is away: each node answers at once that the change is its own for now,
    // then both changes are everyone's once the store is back
    redis.kill();
    let asked = Instant::now();
    let on_a = set(&at_a, 0, true).await;
    let answered = asked.elapsed();
    let fleet = on_a.fleet.expect("nodes share the switch state");
    assert!(
        !fleet.shared,
        "answered as this node's only while the store is away: {fleet:?}"
    );
    let on_b = set(&at_b, 1, true).await;
    assert!(!on_b.fleet.unwrap().shared);
    // and a business line onboarded through node a meanwhile
    add_tenant(&at_a, "gamma")
        .await
        .expect("served here while the store is away");
    // the outage goes on 2 s past the change, so the nodes must reconcile it afterwards, not in passing
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.up().await;
    let converged = agree(
        &nodes,
        &BTreeSet::new(),
        "changes made while the store was away",
    )
    .await;
    // and the store holds the state of the nodes: nothing off
    assert_eq!(stored_off(&redis).await, 0);
    // the business line onboarded while the store was away reached the other node, and the
    // two onboarded before the store restarted empty are still everyone's
    served(&at_b, "gamma").await;
    for id in ["alpha", "beta"] {
        served(&at_b, id).await;
        served(&at_a, id).await;
    }
    println!(
        "FIGURE store restarted empty: refilled {refilled:?} after it was back; store away: a \
         change answered in {answered:?} (this node only), both nodes' changes everywhere \
         {converged:?} after it was back"
    );
    drop((a, b));
}

/// Redis as a deployment should run it: TLS (`rediss://`), an ACL user of the mesh's own, the
/// default user off (so nothing works without the user). Two nodes share the switch state
/// through it, and their workers the registry of terminals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_state_through_redis_over_tls_as_an_acl_user() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let pki = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test redis CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let write = |name: &str, pem: &str| {
        let path = pki.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        write("ca.pem", &ca_pem),
        write("redis.pem", &cert.pem()),
        write("redis.key", &key.serialize_pem()),
    );
    let port = support::free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(["--tls-port", &port.to_string()])
        .args(["--tls-cert-file", &cert_file, "--tls-key-file", &key_file])
        .args(["--tls-ca-cert-file", &ca_file, "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--user", "default", "off"])
        .args(["--user", "mesh", "on", ">mesh-secret", "~*", "&*", "+@all"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("rediss://mesh:mesh-secret@127.0.0.1:{port}");
    let (dir_a, dir_b) = (
        tenants_folder(&["mall"], &[]),
        tenants_folder(&["mall"], &[]),
    );
    // the CA the deployment trusts, as for any TLS client on the machine
    let env = [
        ("MESH_STATE_REDIS_URL", url.as_str()),
        ("MESH_STATE_REDIS_PREFIX", "fleet-tls"),
        ("MESH_ADMIN_TOKEN", OPS_TOKEN),
        ("SSL_CERT_FILE", ca_file.as_str()),
    ];
    let mut a = MeshUp::start(dir_a.path(), &env).await;
    let mut b = MeshUp::start(dir_b.path(), &env).await;
    let (at_a, at_b) = (a.admin_address().await, b.admin_address().await);
    a.shared_worker().await;
    b.shared_worker().await;
    let answer = set(&at_a, 0, false).await;
    let fleet = answer.fleet.expect("nodes share the switch state");
    assert!(fleet.shared && fleet.nodes_total >= 2, "{fleet:?}");
    agree(
        &[at_a.as_str(), at_b.as_str()],
        &["recommend@mall".to_owned()].into(),
        "over TLS",
    )
    .await;
    drop((a, b));
    let _ = redis.kill();
    let _ = redis.wait();
}
