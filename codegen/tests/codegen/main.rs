//! The code generator's tests, in one binary (each file a module): contracts loaded, checked
//! against their baselines, generated and scaffolded, from fixtures and contracts written on
//! the fly.

mod common;

mod bad_input;
mod baseline;
mod breaking;
mod golden;
mod scaffold;
mod shared;
