//! The orderings of the lists (`orderBy`, see docs/paging.md): an index `(sort column,
//! id)` for each, so a page is an index range read in either direction, never a sort of
//! the table. Orderings by creation use the primary key (ids are given in creation
//! order) and need none; `records (release_year, id)` exists already.
//!
//! Products get `lowest_price`, the lowest price of their current offers (null without
//! offers), kept by the offer sync in the transaction that writes the offers: ordering by
//! a MIN over `offers` could not be served by an index. Backfilled here.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    Name,
    LowestPrice,
}

#[derive(DeriveIden)]
enum Records {
    Table,
    Id,
    TitleFolded,
    ArtistFolded,
    Price,
}

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
    NameFolded,
}

#[derive(DeriveIden)]
enum Purchases {
    Table,
    Id,
    Total,
}

/// (index, table, sort column); every index continues with the id, the tie-breaker.
fn indexes() -> Vec<(&'static str, DynIden, DynIden, DynIden)> {
    vec![
        ("products_name_id", Products::Table.into_iden(), Products::Name.into_iden(), Products::Id.into_iden()),
        (
            "products_lowest_price_id",
            Products::Table.into_iden(),
            Products::LowestPrice.into_iden(),
            Products::Id.into_iden(),
        ),
        (
            "records_title_folded_id",
            Records::Table.into_iden(),
            Records::TitleFolded.into_iden(),
            Records::Id.into_iden(),
        ),
        (
            "records_artist_folded_id",
            Records::Table.into_iden(),
            Records::ArtistFolded.into_iden(),
            Records::Id.into_iden(),
        ),
        ("records_price_id", Records::Table.into_iden(), Records::Price.into_iden(), Records::Id.into_iden()),
        (
            "customers_name_folded_id",
            Customers::Table.into_iden(),
            Customers::NameFolded.into_iden(),
            Customers::Id.into_iden(),
        ),
        ("purchases_total_id", Purchases::Table.into_iden(), Purchases::Total.into_iden(), Purchases::Id.into_iden()),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Products::Table)
                    .add_column(ColumnDef::new(Products::LowestPrice).big_integer())
                    .to_owned(),
            )
            .await?;
        // Same SQL on SQLite and Postgres.
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE products SET lowest_price = (SELECT MIN(price) FROM offers WHERE offers.product_id = products.id)",
            )
            .await?;
        for (name, table, column, id) in indexes() {
            manager.create_index(Index::create().name(name).table(table).col(column).col(id).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _, _) in indexes() {
            manager.drop_index(Index::drop().name(name).table(table).to_owned()).await?;
        }
        manager.alter_table(Table::alter().table(Products::Table).drop_column(Products::LowestPrice).to_owned()).await
    }
}
