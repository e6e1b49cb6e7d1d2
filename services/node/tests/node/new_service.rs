//! Adding a business service as the README says, from outside: in a copy of this repository,
//! a contract with a USER call, a BACKEND call and an event; `mesh-codegen new-service coupon
//! --tenant mall`; the service's own file; a build. Then served for mall through `mesh up` on
//! RabbitMQ (a vhost of its own) and PostgreSQL (a database of its own), called from Python
//! grpcio and over HTTP/JSON, its worker SIGKILLed: the coupons are still there, and each
//! coupon's event became a system message in the user's timeline. No existing file is edited
//! by hand.

use crate::support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use support::{Db, MeshUp, Users, Vhost, python, run, signal, timeline_bodies};

/// The contract a developer writes: two calls (one for end users, one for the business line's
/// backend) and an event.
const CONTRACT: &str = r#"// Coupons a business line gives its users.
syntax = "proto3";

package coupon.v1;

import "google/protobuf/empty.proto";
import "mesh/options.proto";

service Coupon {
  option (mesh.service) = {
    name: "coupon"
    version: "1.0.0"
    tier: 2
    owner: "growth-team"
    capabilities: ["coupon.issue"]
  };

  // Gives a user a coupon (the business line's backend decides who gets one).
  rpc IssueCoupon(IssueCouponRequest) returns (IssueCouponResponse) {
    option (mesh.method) = { kind: CALL audience: BACKEND timeout_ms: 500 };
  }

  // The caller's own coupons.
  rpc ListMyCoupons(ListMyCouponsRequest) returns (ListMyCouponsResponse) {
    option (mesh.method) = { kind: CALL audience: USER timeout_ms: 500 degraded { empty: true } };
  }

  // A coupon was issued.
  rpc CouponIssued(.coupon.v1.CouponIssued) returns (google.protobuf.Empty) {
    option (mesh.method) = { kind: EVENT timeout_ms: 2000 };
  }
}

message CouponView {
  string coupon_id = 1;
  string user_id = 2;
  string title = 3;
}

message IssueCouponRequest {
  string coupon_id = 1;
  string user_id = 2;
  string title = 3;
}

message IssueCouponResponse {
  CouponView coupon = 1;
}

message ListMyCouponsRequest {
  string user_id = 1;
}

message ListMyCouponsResponse {
  repeated CouponView coupons = 1;
}

message CouponIssued {
  CouponView coupon = 1;
}
"#;

/// The service's own file, as its developer writes it over the skeleton: coupons in the
/// tenant's record store, an event per coupon, a system message per event.
const SERVICE: &str = r#"//! Coupons a business line gives its users.

mod generated;

pub use generated::SERVICE;

use mesh_api::coupon::v1;
use mesh_contract::{EventBus, HandlerError, RequestContext, fields::id};
use mesh_plugin::{Handles, Notice, Notifier};
use mesh_store::{Collection, StoreError};
use tonic::Status;

/// The coupon service.
#[derive(Clone)]
pub struct CouponService {
    coupons: Collection<v1::CouponView>,
    events: v1::CouponPublisher<std::sync::Arc<dyn EventBus>>,
    notifier: Notifier,
}

fn store_error(err: StoreError) -> Status {
    match err {
        StoreError::Conflict { .. } => Status::already_exists("the coupon exists"),
        err if err.is_transient() => Status::unavailable("coupons are unavailable; retry"),
        err => Status::invalid_argument(err.to_string()),
    }
}

impl CouponService {
    /// Built once per node.
    pub fn new(handles: &Handles) -> Self {
        Self {
            coupons: Collection::new(handles.records.clone(), "coupons"),
            events: v1::CouponPublisher::new(handles.bus.clone()),
            notifier: handles.notifier.clone(),
        }
    }

}

impl mesh_plugin::TenantHooks for CouponService {}

impl CouponService {
    /// `IssueCoupon`.
    pub async fn issue_coupon(
        &self,
        ctx: &RequestContext,
        request: v1::IssueCouponRequest,
    ) -> Result<v1::IssueCouponResponse, Status> {
        id("coupon_id", &request.coupon_id)?;
        id("user_id", &request.user_id)?;
        let coupon = v1::CouponView {
            coupon_id: request.coupon_id,
            user_id: request.user_id,
            title: request.title,
        };
        self.coupons
            .insert(&ctx.tenant, &coupon.coupon_id, &coupon.user_id, &coupon)
            .await
            .map_err(store_error)?;
        self.events
            .publish(ctx, v1::CouponIssued { coupon: Some(coupon.clone()) })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(v1::IssueCouponResponse { coupon: Some(coupon) })
    }

    /// `ListMyCoupons`.
    pub async fn list_my_coupons(
        &self,
        ctx: &RequestContext,
        request: v1::ListMyCouponsRequest,
    ) -> Result<v1::ListMyCouponsResponse, Status> {
        id("user_id", &request.user_id)?;
        let coupons = self
            .coupons
            .owned_by(&ctx.tenant, &request.user_id, 100)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|record| record.value)
            .collect();
        Ok(v1::ListMyCouponsResponse { coupons })
    }

    /// Event `CouponIssued`: the user is told.
    pub async fn on_coupon_issued(
        &self,
        ctx: &RequestContext,
        event: v1::CouponIssued,
    ) -> Result<(), HandlerError> {
        let coupon = event.coupon.unwrap_or_default();
        let notice = Notice {
            to_user: coupon.user_id.clone(),
            conversation_id: format!("coupons-{}", coupon.user_id),
            body: format!("You got a coupon: {}", coupon.title),
            key: format!("coupon:{}:issued", coupon.coupon_id),
        };
        // retried while the message service is away, dead-lettered if the notice is refused
        self.notifier
            .notify(ctx, notice)
            .await
            .map_err(mesh_plugin::handler_error)
    }
}
"#;

/// Calls the coupon service through the front door from Python grpcio, as a client that is
/// not ours does; prints what it saw as JSON.
const CLIENT: &str = r#"
import json, os, sys
import grpc
sys.path.insert(0, os.environ["STUBS"])
from coupon.v1 import coupon_pb2 as pb

channel = grpc.insecure_channel(os.environ["FRONT"])
issue = channel.unary_unary("/coupon.v1.Coupon/IssueCoupon",
    request_serializer=pb.IssueCouponRequest.SerializeToString,
    response_deserializer=pb.IssueCouponResponse.FromString)
listing = channel.unary_unary("/coupon.v1.Coupon/ListMyCoupons",
    request_serializer=pb.ListMyCouponsRequest.SerializeToString,
    response_deserializer=pb.ListMyCouponsResponse.FromString)
backend = (("x-mesh-tenant", "mall"), ("x-mesh-token", "dev-mall-token"))
alice = (("x-mesh-tenant", "mall"), ("authorization", "Bearer " + os.environ["ALICE"]))
carol = (("x-mesh-tenant", "paipai"), ("authorization", "Bearer " + os.environ["CAROL"]))

def code(call, request, metadata):
    try:
        call(request, metadata=metadata, timeout=5)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name

out = {}
for n in os.environ["ISSUE"].split(","):
    if n:
        issued = issue(pb.IssueCouponRequest(coupon_id="c-" + n, user_id="alice", title=n + "0% off"),
                       metadata=backend, timeout=5)
        assert issued.coupon.coupon_id == "c-" + n, issued
out["listed"] = sorted(c.coupon_id for c in listing(pb.ListMyCouponsRequest(), metadata=alice, timeout=5).coupons)
out["again"] = code(issue, pb.IssueCouponRequest(coupon_id="c-1", user_id="alice", title="x"), backend)
out["user_issues"] = code(issue, pb.IssueCouponRequest(coupon_id="c-9", user_id="alice", title="x"), alice)
out["as_bob"] = code(listing, pb.ListMyCouponsRequest(user_id="bob"), alice)
out["paipai"] = code(listing, pb.ListMyCouponsRequest(), carol)
print(json.dumps(out))
"#;

/// The repository this test runs in.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files of the repository as they are in the working tree (tracked and new, not
/// ignored), copied to a fresh folder.
fn copy_of_repository() -> tempfile::TempDir {
    let root = repository();
    let listing = run(Command::new("git").current_dir(&root).args([
        "ls-files",
        "--cached",
        "--others",
        "--exclude-standard",
    ]));
    let copy = tempfile::tempdir().unwrap();
    for file in listing.lines() {
        let source = root.join(file);
        if !source.is_file() {
            continue; // deleted in the working tree
        }
        let target = copy.path().join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&source, &target).unwrap();
    }
    copy
}

/// The suite's own build folder (`target/debug`, where this test binary's `deps/` is), where
/// the copy builds too: the dependencies it shares with this build are built once, not again
/// for the copy (a cargo running tests has let go of its build lock). The copy's own crates
/// must not replace this build's (cargo names a workspace crate's artifacts by its path in
/// the workspace, the same in the copy): [`distinct_from_the_suite`] makes them another
/// version, and its binaries other names.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Each crate of the copy another version (`0.1.0-scaffold`) and its binaries other names
/// (`mesh-scaffold`, `mesh-codegen-scaffold`), so its artifacts sit beside the suite's in the
/// same build folder without replacing any.
fn distinct_from_the_suite(copy: &Path) {
    let listing = run(Command::new("git").current_dir(repository()).args([
        "ls-files",
        "--cached",
        "--others",
        "--exclude-standard",
        "*Cargo.toml",
    ]));
    for file in listing.lines() {
        let path = copy.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let renamed = text
            .replacen(
                "\nversion = \"0.1.0\"\n",
                "\nversion = \"0.1.0-scaffold\"\n",
                1,
            )
            .replace(
                "[[bin]]\nname = \"mesh\"\n",
                "[[bin]]\nname = \"mesh-scaffold\"\n",
            )
            .replace(
                "[[bin]]\nname = \"mesh-codegen\"\n",
                "[[bin]]\nname = \"mesh-codegen-scaffold\"\n",
            );
        std::fs::write(&path, renamed).unwrap();
    }
}

/// Cargo, in the copy, building in the suite's build folder.
fn cargo(copy: &Path, args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = profile_dir();
    let mut command = Command::new(cargo);
    command
        .current_dir(copy)
        .env("CARGO_TARGET_DIR", profile.parent().unwrap())
        .arg(args[0]);
    // the suite's profile, before any `--` (what follows it is the program's)
    if profile.file_name() == Some("release".as_ref()) {
        command.arg("--release");
    }
    run(command.args(&args[1..]))
}

/// `curl` posting `body` as JSON to `path` of the web access with `headers`: status and body.
fn post_json(web: &str, path: &str, headers: &[String], body: &str) -> (u16, serde_json::Value) {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
        .arg(format!("http://{web}{path}"))
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    for h in headers {
        command.args(["-H", h]);
    }
    let out = run(&mut command);
    let (body, status) = out.trim_end().rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

#[tokio::test]
async fn a_service_added_with_the_documented_commands_serves_for_its_tenant_and_keeps_its_data() {
    // one of the tests that load the machine or time a fault: they take turns
    let _heavy = support::heavy().await;
    let copy = copy_of_repository();
    let root = copy.path();
    distinct_from_the_suite(root);
    // 1. the contract
    std::fs::create_dir_all(root.join("contracts/coupon/v1")).unwrap();
    std::fs::write(root.join("contracts/coupon/v1/coupon.proto"), CONTRACT).unwrap();
    // 2. the skeleton, wired in and on for mall
    let said = cargo(
        root,
        &[
            "run",
            "--offline",
            "-q",
            "-p",
            "mesh-codegen",
            "--",
            "new-service",
            "coupon",
            "--tenant",
            "mall",
        ],
    );
    assert!(
        said.contains("service coupon from contracts/coupon/v1"),
        "{said}"
    );
    // what it wrote passes CI's `cargo fmt --check` as it is
    run(Command::new("rustfmt")
        .current_dir(root)
        .args(["--check", "--edition", "2024"])
        .args([
            "services/coupon/src/lib.rs",
            "services/coupon/src/generated.rs",
            "services/coupon/tests/coupon.rs",
        ]));
    // 3. the service's own file
    std::fs::write(root.join("services/coupon/src/lib.rs"), SERVICE).unwrap();
    // built, and the tests the generator wrote pass on it
    cargo(
        root,
        &[
            "build",
            "--offline",
            "-q",
            "-p",
            "mesh-node",
            "--bin",
            "mesh-scaffold",
        ],
    );
    let mesh = profile_dir().join("mesh-scaffold");
    cargo(root, &["test", "--offline", "-q", "-p", "mesh-coupon"]);

    // served through `mesh up` on RabbitMQ and PostgreSQL of its own
    let (db, vhost) = (Db::create().await, Vhost::create());
    let tenants = root.join("tenants");
    let (uri, store) = (vhost.uri(), db.url());
    let env = [
        ("MESH_AMQP_URI", uri.as_str()),
        ("MESH_STORE_POSTGRES", store.as_str()),
        ("MESH_ADMIN_TOKEN", "ops-new-service-token"),
    ];
    let mut up = MeshUp::start_binary(&mesh, &tenants, "127.0.0.1:0", &env).await;
    let web = up.web_address().await;
    let worker = up.shared_worker().await;
    // tokens signed with the shipped keys (the copy's files name a service this test binary
    // does not know, and keep the same keys)
    let users = Users::shipped();
    let alice_token = users.token("mall", "alice");
    let carol_token = users.token("paipai", "carol");

    // from Python grpcio, through the front door
    let python = python();
    let stubs = tempfile::tempdir().unwrap();
    run(Command::new(&python)
        .current_dir(root.join("contracts"))
        .args(["-m", "grpc_tools.protoc", "-I."])
        .arg(format!("--python_out={}", stubs.path().display()))
        .args(["coupon/v1/coupon.proto", "mesh/options.proto"]));
    let client = |issue: &str| {
        let out = run(Command::new(&python)
            .args(["-c", CLIENT])
            .env("STUBS", stubs.path())
            .env("FRONT", &up.front)
            .env("ALICE", &alice_token)
            .env("CAROL", &carol_token)
            .env("ISSUE", issue));
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let seen = client("1,2");
    assert_eq!(seen["listed"], serde_json::json!(["c-1", "c-2"]), "{seen}");
    // what the contract declares, with no code: a second issue is the caller's conflict, a
    // BACKEND call refuses a user, a user acts only as itself, paipai does not run coupon
    assert_eq!(seen["again"], "ALREADY_EXISTS", "{seen}");
    assert_eq!(seen["user_issues"], "PERMISSION_DENIED", "{seen}");
    assert_eq!(seen["as_bob"], "PERMISSION_DENIED", "{seen}");
    assert_eq!(seen["paipai"], "FAILED_PRECONDITION", "{seen}");

    // over HTTP/JSON, as a browser calls it
    let alice_headers = [
        "x-mesh-tenant: mall".to_owned(),
        format!("authorization: Bearer {alice_token}"),
    ];
    let (status, listed) = post_json(&web, "/coupon/v1/ListMyCoupons", &alice_headers, "{}");
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["coupons"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    // a tenant that does not run it: the caller's matter (400), not a server fault (5xx)
    let carol = [
        "x-mesh-tenant: paipai".to_owned(),
        format!("authorization: Bearer {carol_token}"),
    ];
    let (status, refused) = post_json(&web, "/coupon/v1/ListMyCoupons", &carol, "{}");
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused.to_string().contains("does not run coupon"),
        "{refused}"
    );

    // each coupon's event became a system message in alice's timeline
    let channel = up.channel().await;
    let alice = users.ctx("mall", "alice");
    let bodies = timeline_bodies(channel.clone(), &alice, 2).await;
    assert!(
        bodies.contains(&"You got a coupon: 10% off".to_owned())
            && bodies.contains(&"You got a coupon: 20% off".to_owned()),
        "{bodies:?}"
    );

    // the worker SIGKILLed: the supervisor starts another, and the coupons are still there
    signal(support::field(&worker, "pid"), "-KILL");
    let again = up
        .output
        .wait_for("the worker restarted", |l| {
            l.starts_with("serving group=shared")
        })
        .await;
    assert_ne!(
        support::field(&again, "pid"),
        support::field(&worker, "pid")
    );
    let seen = client("3");
    assert_eq!(
        seen["listed"],
        serde_json::json!(["c-1", "c-2", "c-3"]),
        "{seen}"
    );
    let bodies = timeline_bodies(channel, &alice, 3).await;
    assert!(
        bodies.contains(&"You got a coupon: 30% off".to_owned()),
        "{bodies:?}"
    );
    // a test's queues die with its vhost
    assert!(
        !vhost.queues("mesh.mall.coupon.v1.coupon").is_empty(),
        "the coupon consumer's queue is mall's, on its vhost"
    );
    drop(up);
    db.drop_database().await;
}
