//! Small upload bodies kept in the database: a body up to `UPLOAD_INLINE_MAX_BYTES` is
//! stored here, in the transaction that accepts it and shares its commit with the other
//! bodies accepted at the same moment (group commit), instead of a spool file of its own
//! with its own sync. A separate table keeps the bodies out of every read of `uploads`;
//! a row lives until its upload is ingested.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UploadBodies {
    Table,
    UploadId,
    Body,
}

#[derive(DeriveIden)]
enum Uploads {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UploadBodies::Table)
                    .col(ColumnDef::new(UploadBodies::UploadId).big_integer().not_null().primary_key())
                    .col(ColumnDef::new(UploadBodies::Body).blob().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("upload_bodies_upload_id_fkey")
                            .from(UploadBodies::Table, UploadBodies::UploadId)
                            .to(Uploads::Table, Uploads::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(UploadBodies::Table).to_owned()).await
    }
}
