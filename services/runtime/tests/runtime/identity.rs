//! Who is calling: user tokens verified against each tenant's keys (HS256, ES256 from a PEM,
//! a JWKS document), the three kinds of caller told apart by their credential, and each
//! method's contract audience enforced.

use crate::common;

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_contract::{Caller, RequestContext, TenantId, UserIdentity};
use mesh_runtime::{
    TenantDirectory, Tenants,
    identity::{UserTokenError, UserTokens},
    layers::Catalogue,
};

const SECRET: &str = "a-development-secret-of-32-bytes!";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A token with `claims` on top of valid ones for `mall-accounts` / `mesh`.
fn sign(key: &EncodingKey, header: Header, claims: serde_json::Value) -> String {
    let mut all = serde_json::json!({
        "sub": "alice", "iss": "mall-accounts", "aud": "mesh",
        "iat": now(), "nbf": now() - 1, "exp": now() + 600,
    });
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    jsonwebtoken::encode(&header, &all, key).unwrap()
}

fn hs256(claims: serde_json::Value) -> String {
    sign(
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Header::new(Algorithm::HS256),
        claims,
    )
}

#[test]
fn a_valid_token_names_its_user_and_terminal() {
    let verifier = UserTokens::development("mall-accounts", SECRET)
        .verifier()
        .unwrap();
    let who = verifier
        .verify(&hs256(serde_json::json!({"terminal": "phone"})))
        .unwrap();
    assert_eq!(
        who,
        UserIdentity {
            user: "alice".into(),
            terminal: Some("phone".into())
        }
    );
}

#[test]
fn expired_early_foreign_and_misaddressed_tokens_are_refused() {
    let verifier = UserTokens::development("mall-accounts", SECRET)
        .verifier()
        .unwrap();
    let refused = |token: String, what: &str| {
        let err = verifier.verify(&token).expect_err(what);
        println!("{what}: {err}");
    };
    refused(
        hs256(serde_json::json!({"exp": now() - 3600})),
        "an expired token",
    );
    refused(
        hs256(serde_json::json!({"nbf": now() + 3600})),
        "a token not valid yet",
    );
    refused(
        hs256(serde_json::json!({"aud": "another-platform"})),
        "a token for another audience",
    );
    refused(
        hs256(serde_json::json!({"iss": "finance-accounts"})),
        "a token of another issuer",
    );
    refused(
        sign(
            &EncodingKey::from_secret(b"finance's-own-secret-of-32-bytes!!"),
            Header::new(Algorithm::HS256),
            serde_json::json!({}),
        ),
        "a token signed with another tenant's key",
    );
    let unsigned = {
        let token = hs256(serde_json::json!({}));
        let (head, _) = token.rsplit_once('.').unwrap();
        format!("{head}.")
    };
    refused(unsigned, "a token without its signature");
    refused("not.a.token".into(), "garbage");
    // no exp at all: a token valid forever is not accepted
    let forever = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "alice", "iss": "mall-accounts", "aud": "mesh"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    refused(forever, "a token without exp");
}

#[test]
fn no_user_may_be_the_platforms_sender_a_channels_customer_or_carry_a_bad_id() {
    let verifier = UserTokens::development("mall-accounts", SECRET)
        .verifier()
        .unwrap();
    for sub in [
        "system",
        "System",
        "SYSTEM",
        "system.",
        "_sys-tem",
        "system@mall",
        "sys\u{200b}tem",
        "a b",
        "",
        // a third-party channel's customer is the mesh's to name, never a token's
        "ch:wx:oCustomer1",
    ] {
        let err = verifier
            .verify(&hs256(serde_json::json!({ "sub": sub })))
            .expect_err(sub);
        assert!(
            matches!(err, UserTokenError::Subject("sub")),
            "{sub:?}: {err}"
        );
    }
}

/// ES256 with the account system's public key in a PEM file, as a deployment configures it;
/// an HS256 token (signed with anything, even the public key's bytes) is refused.
#[test]
fn an_es256_public_key_verifies_its_tokens_and_nothing_else() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mall.pem"), pair.public_key_pem()).unwrap();
    let mut users = UserTokens {
        issuer: "mall-accounts".into(),
        audience: "mesh".into(),
        public_key_file: Some("mall.pem".into()),
        algorithm: Some("ES256".into()),
        leeway_secs: 30,
        ..UserTokens::default()
    };
    users.resolve_paths(dir.path());
    let verifier = users.verifier().unwrap();
    let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let token = sign(
        &private,
        Header::new(Algorithm::ES256),
        serde_json::json!({}),
    );
    assert_eq!(verifier.verify(&token).unwrap().user, "alice");
    let confused = sign(
        &EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
        Header::new(Algorithm::HS256),
        serde_json::json!({}),
    );
    assert!(matches!(
        verifier.verify(&confused),
        Err(UserTokenError::Algorithm(Algorithm::HS256))
    ));
    // and the tenant file names what is wrong with a key that is not one
    std::fs::write(dir.path().join("mall.pem"), "not a key").unwrap();
    let (field, message) = users.verifier().unwrap_err();
    assert_eq!(field, "users.public_key_file");
    assert!(message.contains("mall.pem"), "{message}");
}

/// A JWKS document: the key is picked by the token's `kid`.
#[test]
fn a_jwks_document_verifies_tokens_by_key_id() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&private, Algorithm::ES256).unwrap();
    let mut jwk = serde_json::to_value(jwk).unwrap();
    jwk["kid"] = "2026-11".into();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.json");
    std::fs::write(&file, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let verifier = UserTokens {
        issuer: "mall-accounts".into(),
        audience: "mesh".into(),
        jwks_file: Some(file),
        leeway_secs: 30,
        ..UserTokens::default()
    }
    .verifier()
    .unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("2026-11".into());
    let token = sign(&private, header.clone(), serde_json::json!({"sub": "bob"}));
    assert_eq!(verifier.verify(&token).unwrap().user, "bob");
    header.kid = Some("retired".into());
    let token = sign(&private, header, serde_json::json!({}));
    assert!(verifier.verify(&token).is_err(), "an unknown kid");
}

fn directory() -> (TenantDirectory, Tenants) {
    let tenants = Tenants::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants"),
        mesh_api::CONTRACTS,
    )
    .unwrap();
    let directory = TenantDirectory::from_tenants(&tenants, Catalogue(mesh_api::CONTRACTS))
        .with_node_credential("the-node-credential");
    (directory, tenants)
}

fn mall() -> RequestContext {
    RequestContext::new(TenantId::new("mall").unwrap())
}

#[test]
fn each_credential_makes_its_kind_of_caller() {
    let (directory, tenants) = directory();
    let token = |tenant: &str, user: &str| {
        tenants
            .get(tenant)
            .unwrap()
            .users
            .as_ref()
            .unwrap()
            .issue(user, None, 60)
            .unwrap()
    };
    let user = directory
        .authenticate(mall().with_user_token(&token("mall", "alice")))
        .unwrap();
    assert!(matches!(&user.caller, Caller::User(u) if u.user == "alice"));
    assert_eq!(user.authorization, None, "the token travels no further");
    let backend = directory
        .authenticate(mall().with_token("dev-mall-token"))
        .unwrap();
    assert_eq!(backend.caller, Caller::Backend);
    let node = directory
        .authenticate(mall().with_token("the-node-credential"))
        .unwrap();
    assert_eq!(node.caller, Caller::Node);

    // finance's user token is not mall's; two credentials at once say nothing
    for refused in [
        mall().with_user_token(&token("finance", "alice")),
        mall().with_user_token("garbage"),
        mall()
            .with_user_token(&token("mall", "alice"))
            .with_token("dev-mall-token"),
        mall().with_token("dev-paipai-token"),
    ] {
        let err = directory.authenticate(refused).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the credential presented is not valid for tenant mall"
        );
    }
}

#[test]
fn each_method_admits_the_callers_its_contract_names() {
    let (directory, _) = directory();
    let user = Caller::User(UserIdentity {
        user: "alice".into(),
        terminal: None,
    });
    let admitted = |path: &str, caller: &Caller| directory.admits(path, caller).is_ok();
    // chat is for people (a channel's customers are sent for by the mesh itself, and only
    // them); the locator and deliveries for the mesh; orders for both people and the
    // business backend
    assert!(admitted("/message.v1.Message/Send", &user));
    assert!(!admitted("/message.v1.Message/Send", &Caller::Backend));
    assert!(!admitted("/message.v1.Message/Send", &Caller::Node));
    assert!(admitted(
        "/message.v1.Message/SendFromChannel",
        &Caller::Node
    ));
    assert!(!admitted("/message.v1.Message/SendFromChannel", &user));
    assert!(!admitted(
        "/message.v1.Message/SendFromChannel",
        &Caller::Backend
    ));
    assert!(admitted("/locator.v1.Locator/Locate", &Caller::Node));
    assert!(!admitted("/locator.v1.Locator/Locate", &user));
    assert!(!admitted("/locator.v1.Locator/Register", &Caller::Backend));
    assert!(!admitted("/gateway.v1.Gateway/Deliver", &user));
    assert!(admitted("/gateway.v1.Gateway/Attach", &user));
    assert!(admitted("/order.v1.Order/GetOrder", &user));
    assert!(admitted("/order.v1.Order/GetOrder", &Caller::Backend));
    let refused = directory
        .admits("/locator.v1.Locator/Locate", &Caller::Backend)
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "/locator.v1.Locator/Locate is for NODE callers; this one is BACKEND"
    );
}

/// A user acts as itself only, whatever the request says.
#[test]
fn a_user_acts_only_as_itself() {
    let mut ctx = mall();
    ctx.caller = Caller::User(UserIdentity {
        user: "alice".into(),
        terminal: Some("phone".into()),
    });
    assert_eq!(ctx.act_as("user_id", "").unwrap(), "alice");
    assert_eq!(
        ctx.act_as("user_id", "bob").unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(ctx.act_for_terminal("terminal_id", "").unwrap(), "phone");
    assert_eq!(
        ctx.act_for_terminal("terminal_id", "laptop")
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    ctx.caller = Caller::Anonymous;
    assert_eq!(
        ctx.act_as("user_id", "bob").unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}

/// The front door authenticates before it routes: while a tenant has no process (it restarts,
/// say), an authenticated caller hears UNAVAILABLE, but a wrong credential and an unknown
/// tenant hear the same UNAUTHENTICATED as ever, so nobody learns which tenants exist from it.
#[tokio::test]
async fn the_front_door_refuses_before_it_reveals_a_tenants_state() {
    use mesh_api::recommend::v1 as recommend;
    let (directory, tenants) = directory();
    let front = mesh_runtime::front_door::FrontDoor::new(Catalogue(mesh_api::CONTRACTS))
        .with_directory(directory);
    for config in tenants.tenants.values() {
        front.serve_tenant(config);
    }
    let channel = common::serve_front_door(front.clone()).await;
    let caller = recommend::RecommendCaller::new(channel.clone());
    let ask = |ctx: RequestContext| {
        let mut caller = caller.clone();
        async move {
            caller
                .suggest(&ctx, recommend::SuggestRequest::default())
                .await
                .unwrap_err()
        }
    };
    let unrouted = ask(mall().with_token("dev-mall-token")).await;
    assert_eq!(unrouted.code(), tonic::Code::Unavailable, "{unrouted:?}");
    let wrong = ask(mall().with_token("dev-paipai-token")).await;
    let unknown = ask(RequestContext::new(TenantId::new("acme").unwrap()).with_token("x")).await;
    assert_eq!(
        (wrong.code(), wrong.message()),
        (
            tonic::Code::Unauthenticated,
            "the credential presented is not valid for tenant mall"
        )
    );
    assert_eq!(
        (unknown.code(), unknown.message()),
        (
            tonic::Code::Unauthenticated,
            "the credential presented is not valid for tenant acme"
        )
    );
    // the audience is checked here too: the backend never reaches a worker with a Send
    let send = mesh_api::message::v1::MessageCaller::new(channel)
        .send(
            &mall().with_token("dev-mall-token"),
            mesh_api::message::v1::SendRequest::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(send.code(), tonic::Code::PermissionDenied, "{send:?}");
    // refused callers are no evidence of the tenant's health: nothing an automatic rule reads
    let window = front.window(
        &TenantId::new("mall").unwrap(),
        2,
        std::time::Duration::from_secs(60),
    );
    assert_eq!(window.calls, 0, "{window:?}");
}
