//! The runtime's tests, in one binary (each file a module): the stack's layers, the front door,
//! identity and audit, thread isolation, connection limits, and the shape of the code itself.

mod common;

mod audit;
mod auth;
mod config;
mod connections;
mod front_door;
mod identity;
mod layers;
mod modules;
mod own_server;
mod threads;
