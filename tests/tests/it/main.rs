//! End-to-end tests of the post office, each on SQLite and on a real PostgreSQL.

mod scripted_http;
mod util;

mod audit_content;
mod audit_desk;
mod brokers;
mod concurrency;
mod crash;
mod delivery_client;
mod downstream;
mod downstream_audit;
mod downstream_examples;
mod event_selection;
mod files;
mod front_door;
mod ingest;
mod isolation;
mod pipeline;
mod pull;
mod pull_api;
mod queries;
mod real_payloads;
mod receipts;
mod reliability;
mod transitions;
