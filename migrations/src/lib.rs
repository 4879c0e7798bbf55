//! Every schema change of the post office. `hub-worker migrate`, the embedding API and the tests
//! all call [`Migrator::up`]; nothing else creates or alters the layer tables.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_layer_tables;
mod m20261121_000002_dispatch_intake_and_ordering;
mod m20261121_000003_partial_claim_indexes;
mod m20261121_000004_leaner_lineage_indexes;
mod m20261121_000005_partial_dispatch_indexes;
mod m20261121_000006_ordered_dispatch_claims;
mod m20261121_000007_replayed_by;
mod m20261121_000009_dispatch_raw_body;
mod m20261121_000010_bounded_queries;
mod m20261121_000011_downstream_delivery;
mod m20261122_000012_pulled_sources;

/// The post office's migrations, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_layer_tables::Migration),
            Box::new(m20261121_000002_dispatch_intake_and_ordering::Migration),
            Box::new(m20261121_000003_partial_claim_indexes::Migration),
            Box::new(m20261121_000004_leaner_lineage_indexes::Migration),
            Box::new(m20261121_000005_partial_dispatch_indexes::Migration),
            Box::new(m20261121_000006_ordered_dispatch_claims::Migration),
            Box::new(m20261121_000007_replayed_by::Migration),
            Box::new(m20261121_000009_dispatch_raw_body::Migration),
            Box::new(m20261121_000010_bounded_queries::Migration),
            Box::new(m20261121_000011_downstream_delivery::Migration),
            Box::new(m20261122_000012_pulled_sources::Migration),
        ]
    }
}
