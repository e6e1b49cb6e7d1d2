//! Helpers shared by the codegen tests: contracts folders written on the fly.

#![allow(dead_code)]

use std::path::Path;

/// A temporary contracts folder.
pub struct Contracts {
    pub dir: tempfile::TempDir,
}

impl Contracts {
    /// A folder holding one file.
    pub fn with(path: &str, source: &str) -> Self {
        let contracts = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        contracts.write(path, source);
        contracts
    }

    pub fn write(&self, path: &str, source: &str) {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, source).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A valid one-service contract `thing/v1` to vary in tests: `{SERVICE_OPTS}`, `{RPCS}`,
/// `{EXTRA_MESSAGES}` and `{THING_FIELDS}` are replaced by the caller.
pub const THING: &str = r#"syntax = "proto3";

package thing.v1;

import "google/protobuf/empty.proto";
import "mesh/options.proto";

service Thing {
  option (mesh.service) = {
    name: "thing"
    version: "1.0.0"
    {SERVICE_OPTS}
    owner: "team"
  };
{RPCS}
}

enum Color {
  COLOR_UNSPECIFIED = 0;
  COLOR_RED = 1;
  COLOR_BLUE = 2;
}

message GetThingRequest {
  string id = 1;
}

message GetThingResponse {
{THING_FIELDS}
}

message ThingChanged {
  string id = 1;
}
{EXTRA_MESSAGES}"#;

/// Default methods of `Thing`.
pub const RPCS: &str = r#"
  rpc GetThing(GetThingRequest) returns (GetThingResponse) {
    option (mesh.method) = { kind: CALL timeout_ms: 100 };
  }

  rpc ThingChanged(.thing.v1.ThingChanged) returns (google.protobuf.Empty) {
    option (mesh.method) = { kind: EVENT timeout_ms: 100 };
  }"#;

/// Default field list of `GetThingResponse`.
pub const THING_FIELDS: &str =
    "  string id = 1;\n  int64 size = 2;\n  repeated string tags = 3;\n  Color color = 4;";

/// [`THING`] with the given replacements (unmentioned placeholders get their defaults).
pub fn thing(replacements: &[(&str, &str)]) -> String {
    let mut source = THING.to_owned();
    for (key, value) in replacements {
        source = source.replace(key, value);
    }
    source
        .replace("{SERVICE_OPTS}", "tier: 1")
        .replace("{RPCS}", RPCS)
        .replace("{EXTRA_MESSAGES}", "")
        .replace("{THING_FIELDS}", THING_FIELDS)
}

/// Loads a contracts folder holding `thing/v1/thing.proto` with `source`.
pub fn load_thing(
    source: &str,
) -> (
    Contracts,
    Result<mesh_codegen::ContractSet, mesh_codegen::ContractError>,
) {
    let contracts = Contracts::with("thing/v1/thing.proto", source);
    let result = mesh_codegen::load(contracts.path());
    (contracts, result)
}
