//! The cross-cutting tables: the durable job queue, periodic-job leases and their run
//! log, and a small key/value table for deployment-wide settings (the offers token).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Kind,
    Payload,
    Status,
    OrderingKey,
    Attempts,
    MaxAttempts,
    RunAt,
    LockedBy,
    LockedUntil,
    LastError,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum PeriodicLeases {
    Table,
    Name,
    Holder,
    ExpiresAt,
    LastStartedAt,
}

#[derive(DeriveIden)]
enum PeriodicRuns {
    Table,
    Id,
    Name,
    Node,
    StartedAt,
    FinishedAt,
    Error,
}

#[derive(DeriveIden)]
enum Settings {
    Table,
    Key,
    Value,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(ColumnDef::new(Jobs::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Jobs::Kind).string().not_null())
                    .col(ColumnDef::new(Jobs::Payload).text().not_null())
                    .col(ColumnDef::new(Jobs::Status).string().not_null())
                    .col(ColumnDef::new(Jobs::OrderingKey).string())
                    .col(ColumnDef::new(Jobs::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(Jobs::MaxAttempts).integer().not_null())
                    .col(ColumnDef::new(Jobs::RunAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::LockedBy).string())
                    .col(ColumnDef::new(Jobs::LockedUntil).big_integer())
                    .col(ColumnDef::new(Jobs::LastError).text())
                    .col(ColumnDef::new(Jobs::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::UpdatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::FinishedAt).big_integer())
                    .to_owned(),
            )
            .await?;
        // The claim query scans due jobs by status and time; FIFO groups look up their
        // predecessors by (ordering_key, id).
        manager
            .create_index(
                Index::create()
                    .name("jobs_status_run_at")
                    .table(Jobs::Table)
                    .col(Jobs::Status)
                    .col(Jobs::RunAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("jobs_ordering_key_id")
                    .table(Jobs::Table)
                    .col(Jobs::OrderingKey)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PeriodicLeases::Table)
                    .col(ColumnDef::new(PeriodicLeases::Name).string().not_null().primary_key())
                    .col(ColumnDef::new(PeriodicLeases::Holder).string())
                    .col(ColumnDef::new(PeriodicLeases::ExpiresAt).big_integer().not_null().default(0))
                    .col(ColumnDef::new(PeriodicLeases::LastStartedAt).big_integer().not_null().default(0))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PeriodicRuns::Table)
                    .col(ColumnDef::new(PeriodicRuns::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(PeriodicRuns::Name).string().not_null())
                    .col(ColumnDef::new(PeriodicRuns::Node).string().not_null())
                    .col(ColumnDef::new(PeriodicRuns::StartedAt).big_integer().not_null())
                    .col(ColumnDef::new(PeriodicRuns::FinishedAt).big_integer())
                    .col(ColumnDef::new(PeriodicRuns::Error).text())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("periodic_runs_name_started")
                    .table(PeriodicRuns::Table)
                    .col(PeriodicRuns::Name)
                    .col(PeriodicRuns::StartedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Settings::Table)
                    .col(ColumnDef::new(Settings::Key).string().not_null().primary_key())
                    .col(ColumnDef::new(Settings::Value).text().not_null())
                    .col(ColumnDef::new(Settings::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Jobs::Table.into_iden(),
            PeriodicLeases::Table.into_iden(),
            PeriodicRuns::Table.into_iden(),
            Settings::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
