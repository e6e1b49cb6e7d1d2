//! The message stores, in one binary (each file a module): every backend held to the same
//! behaviour, and PostgreSQL in the states a database can be in.

mod database_states;
mod store;
