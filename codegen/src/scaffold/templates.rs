//! The files a new service starts from: its contract and its crate's manifest.

pub(super) const STARTER_PROTO: &str = r#"// {Name}: what it is for, in one sentence (a starter written by `mesh-codegen new-service
// {name}`: change it to the calls and events the service has, then run the command again).
syntax = "proto3";

package {name}.v1;

import "google/protobuf/empty.proto";
import "mesh/options.proto";

service {Name} {
  option (mesh.service) = {
    name: "{name}"
    version: "1.0.0"
    tier: 2
    owner: "your-team"
    capabilities: ["{name}.write", "{name}.read"]
  };

  // Creates a record for a user (the business line's backend calls it).
  rpc Create{Name}(Create{Name}Request) returns (Create{Name}Response) {
    option (mesh.method) = { kind: CALL audience: BACKEND timeout_ms: 300 };
  }

  // The caller's own records (end users call it with their token).
  rpc ListMy{Name}s(ListMy{Name}sRequest) returns (ListMy{Name}sResponse) {
    option (mesh.method) = {
      kind: CALL
      audience: [USER, BACKEND]
      timeout_ms: 200
      degraded { empty: true }
    };
  }

  // A record was created.
  rpc {Name}Created(.{name}.v1.{Name}Created) returns (google.protobuf.Empty) {
    option (mesh.method) = { kind: EVENT timeout_ms: 2000 };
  }
}

message {Name}Record {
  string id = 1;
  string user_id = 2;
  string body = 3;
}

message Create{Name}Request {
  {Name}Record record = 1;
}

message Create{Name}Response {
  {Name}Record record = 1;
}

message ListMy{Name}sRequest {
  string user_id = 1;
}

message ListMy{Name}sResponse {
  repeated {Name}Record records = 1;
}

message {Name}Created {
  {Name}Record record = 1;
}
"#;

pub(super) const CARGO: &str = r#"[package]
name = "{crate}"
version = "0.1.0"
description = "The {name} service, assembled by the platform (written by mesh-codegen new-service)."
edition.workspace = true
rust-version.workspace = true
license.workspace = true
publish.workspace = true

[dependencies]
mesh-api.workspace = true
mesh-contract.workspace = true
mesh-plugin.workspace = true
mesh-store.workspace = true
prost.workspace = true
tonic.workspace = true

[dev-dependencies]
tokio.workspace = true

[lints]
workspace = true
"#;
