//! The operators' tools, in one binary (each file a module): `meshctl` and `mesh` run as
//! child processes against a running `mesh up`.

mod support;

mod audit;
mod lifecycle;
mod meshctl;
