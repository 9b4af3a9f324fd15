//! The intake's output queue: one notice per stored message, numbered in commit order.
//!
//! A notice is written in the transaction that moves its message to `stored`, so a stored
//! message without a notice (or with two: the unique key on the message) cannot exist.
//! `sequence` is the queue position consumers read after (`WHERE sequence > cursor`); the
//! writer makes notices commit in sequence order (see `src/intake/process.rs`). The
//! notice keeps its own copy of what it announces, so reading the queue is one table.
//! Messages stored before this migration get their notices here, in the order they were
//! stored, so a consumer reading from the start sees every stored message.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum IntakeNotices {
    Table,
    Sequence,
    IntakeMessageId,
    MessageId,
    Title,
    Genre,
    Bucket,
    ObjectName,
    StoredAt,
}

#[derive(DeriveIden)]
enum IntakeMessages {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IntakeNotices::Table)
                    .col(
                        ColumnDef::new(IntakeNotices::Sequence).big_integer().not_null().auto_increment().primary_key(),
                    )
                    .col(ColumnDef::new(IntakeNotices::IntakeMessageId).big_integer().not_null())
                    // The client's own id of the message (not unique).
                    .col(ColumnDef::new(IntakeNotices::MessageId).string())
                    .col(ColumnDef::new(IntakeNotices::Title).text().not_null())
                    .col(ColumnDef::new(IntakeNotices::Genre).string().not_null())
                    .col(ColumnDef::new(IntakeNotices::Bucket).string().not_null())
                    .col(ColumnDef::new(IntakeNotices::ObjectName).text().not_null())
                    .col(ColumnDef::new(IntakeNotices::StoredAt).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("intake_notices_intake_message_id_fkey")
                            .from(IntakeNotices::Table, IntakeNotices::IntakeMessageId)
                            .to(IntakeMessages::Table, IntakeMessages::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // Exactly one notice per message: a second insert for a message fails its transaction.
        manager
            .create_index(
                Index::create()
                    .name("intake_notices_intake_message_id")
                    .table(IntakeNotices::Table)
                    .col(IntakeNotices::IntakeMessageId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO intake_notices (intake_message_id, message_id, title, genre, bucket, object_name, stored_at)
                 SELECT id, message_id, title, genre, bucket, object_name, processed_at FROM intake_messages
                 WHERE status = 'stored' ORDER BY processed_at, id",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(IntakeNotices::Table).to_owned()).await
    }
}
