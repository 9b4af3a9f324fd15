//! The intake pipeline: one row per submitted message, from `queued` to
//! `stored` (its notice: bucket and key) or `failed` (its reason, the dead-letter list).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum IntakeMessages {
    Table,
    Id,
    MessageId,
    Title,
    Genre,
    ObjectName,
    Body,
    Status,
    Bucket,
    Reason,
    JobId,
    SubmittedAt,
    ProcessedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IntakeMessages::Table)
                    .col(ColumnDef::new(IntakeMessages::Id).big_integer().not_null().auto_increment().primary_key())
                    // The client's own id (the message's `id`): kept for display and lookup, not unique.
                    .col(ColumnDef::new(IntakeMessages::MessageId).string())
                    .col(ColumnDef::new(IntakeMessages::Title).text().not_null())
                    .col(ColumnDef::new(IntakeMessages::Genre).string().not_null())
                    // The object's name inside its bucket, derived from the title at submission.
                    .col(ColumnDef::new(IntakeMessages::ObjectName).text().not_null())
                    // The message's JSON exactly as submitted: the file's content.
                    .col(ColumnDef::new(IntakeMessages::Body).text().not_null())
                    .col(ColumnDef::new(IntakeMessages::Status).string().not_null())
                    .col(ColumnDef::new(IntakeMessages::Bucket).string())
                    .col(ColumnDef::new(IntakeMessages::Reason).text())
                    // The durable job that writes this message (no foreign key: finished jobs are purged).
                    .col(ColumnDef::new(IntakeMessages::JobId).big_integer().not_null())
                    .col(ColumnDef::new(IntakeMessages::SubmittedAt).big_integer().not_null())
                    .col(ColumnDef::new(IntakeMessages::ProcessedAt).big_integer())
                    .check(("intake_messages_status", Expr::cust("status IN ('queued', 'stored', 'failed')")))
                    .check(("intake_messages_stored_has_bucket", Expr::cust("status <> 'stored' OR bucket IS NOT NULL")))
                    .check(("intake_messages_failed_has_reason", Expr::cust("status <> 'failed' OR reason IS NOT NULL")))
                    .check((
                        "intake_messages_processed_at",
                        Expr::cust(
                            "(status = 'queued' AND processed_at IS NULL) OR (status <> 'queued' AND processed_at IS NOT NULL)",
                        ),
                    ))
                    .to_owned(),
            )
            .await?;
        // Lists filtered by status (and the health check's queue depth) walk (status, id);
        // a job loads its messages by (job_id, id); clients look messages up by their own id.
        for (name, columns) in [
            ("intake_messages_status_id", [IntakeMessages::Status, IntakeMessages::Id]),
            ("intake_messages_job_id", [IntakeMessages::JobId, IntakeMessages::Id]),
            ("intake_messages_message_id", [IntakeMessages::MessageId, IntakeMessages::Id]),
        ] {
            let mut index = Index::create();
            index.name(name).table(IntakeMessages::Table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(IntakeMessages::Table).to_owned()).await
    }
}
