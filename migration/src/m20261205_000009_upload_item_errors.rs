//! Per-item outcomes of uploads: the error policy an upload was accepted with, stored so
//! that whichever node ingests it handles failing items the same way. Item errors keep
//! living in `rejections` (a JSON array, now with each error's field) and their count in
//! `items_rejected`; the API calls them `itemErrors` and `itemsFailed`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Uploads {
    Table,
    ErrorPolicy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Uploads accepted before this migration were ingested as `reject_failed_rows`.
        manager
            .alter_table(
                Table::alter()
                    .table(Uploads::Table)
                    .add_column(
                        ColumnDef::new(Uploads::ErrorPolicy).string_len(24).not_null().default("reject_failed_rows"),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Uploads::Table).drop_column(Uploads::ErrorPolicy).to_owned()).await
    }
}
