//! The contracts' transports, in one binary (each file a module): the generated stubs over
//! tonic on loopback, the embedded bus, and AMQP on the machine's RabbitMQ and on nodes of a
//! test's own (a cut connection, a cluster losing a node).

mod broker;
mod suite;

mod amqp;
mod amqp_cluster;
mod amqp_recovery;
mod embedded;
mod tonic_loopback;
